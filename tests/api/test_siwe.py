"""EIP-4361 message parsing: the EIP's own example, round trips, and no crash on any text."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btcloan.api.siwe import SiweFormatError, SiweMessage, build_message, parse_message

# The example message of EIP-4361 (https://eips.ethereum.org/EIPS/eip-4361, "Example message").
EIP_EXAMPLE = """service.invalid wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ServiceOrg Terms of Service: https://service.invalid/tos

URI: https://service.invalid/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""


def test_the_eip_example_parses_and_rebuilds_exactly() -> None:
    message = parse_message(EIP_EXAMPLE)
    assert message.domain == "service.invalid"
    assert message.address == "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
    assert (
        message.statement == "I accept the ServiceOrg Terms of Service: https://service.invalid/tos"
    )
    assert (message.chain_id, message.nonce, message.version) == (1, "32891756", "1")
    assert message.issued_at == datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)
    assert len(message.resources) == 2
    assert build_message(message) == EIP_EXAMPLE


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (EIP_EXAMPLE.replace("0xC02aaA39", "0xc02aaa39"), "checksummed"),
        (EIP_EXAMPLE.replace("Version: 1\nChain ID: 1\n", "Chain ID: 1\nVersion: 1\n"), "order"),
        (EIP_EXAMPLE.replace("Nonce: 32891756\n", ""), "Nonce"),
        (EIP_EXAMPLE.replace("2021-09-30T16:25:24Z", "yesterday"), "RFC 3339"),
        (EIP_EXAMPLE.replace("2021-09-30T16:25:24Z", "2021-09-30T16:25:24"), "time zone"),
        (EIP_EXAMPLE.replace("Nonce: 32891756", "Nonce: 123"), "8 to 64"),
        (EIP_EXAMPLE.replace(" wants you", " would like you"), "first line"),
    ],
)
def test_malformed_messages_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(SiweFormatError, match=reason):
        parse_message(text)


_LINES = EIP_EXAMPLE.split("\n")
_MANGLED_LINE = st.builds(
    lambda line, junk: line[: len(line) // 2] + junk, st.sampled_from(_LINES), st.text(max_size=12)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_LINES) | _MANGLED_LINE | st.text(max_size=30), max_size=16))
def test_any_text_parses_or_is_refused_cleanly(lines: list[str]) -> None:
    """Lines of a real message, shuffled, mangled or random: never another exception."""
    with contextlib.suppress(SiweFormatError):
        parse_message("\n".join(lines))


@settings(max_examples=100, deadline=None)
@given(
    domain=st.from_regex(r"[a-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True),
    statement=st.none() | st.from_regex(r"[A-Za-z0-9 .,]{1,60}", fullmatch=True),
    chain_id=st.integers(min_value=1, max_value=2**53),
    nonce=st.from_regex(r"[A-Za-z0-9]{8,64}", fullmatch=True),
    seconds=st.integers(min_value=0, max_value=4_000_000_000),
)
def test_build_then_parse_round_trips(
    domain: str, statement: str | None, chain_id: int, nonce: str, seconds: int
) -> None:
    if statement is not None and statement.startswith("URI: "):
        statement = None
    message = SiweMessage(
        domain=domain,
        address="0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
        statement=statement,
        uri="https://desk.example/login",
        version="1",
        chain_id=chain_id,
        nonce=nonce,
        issued_at=datetime.fromtimestamp(seconds, tz=UTC),
    )
    assert parse_message(build_message(message)) == message
