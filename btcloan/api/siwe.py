"""EIP-4361 (Sign-In with Ethereum) messages: build the one we ask a wallet to sign, and parse a
signed one strictly. Pure functions; checking the fields against settings is the service's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from eth_utils import is_checksum_address

from btcloan.api.inputs import whole_number

_HEADER = re.compile(r"^(?P<domain>[^\s/]+) wants you to sign in with your Ethereum account:$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,64}$")
_FIELDS = (
    ("uri", "URI"),
    ("version", "Version"),
    ("chain_id", "Chain ID"),
    ("nonce", "Nonce"),
    ("issued_at", "Issued At"),
    ("expiration_time", "Expiration Time"),
    ("not_before", "Not Before"),
    ("request_id", "Request ID"),
)
_REQUIRED = ("uri", "version", "chain_id", "nonce", "issued_at")


class SiweFormatError(ValueError):
    """The text is not an EIP-4361 message (the reason says which part)."""


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    statement: str | None
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_message(message: SiweMessage) -> str:
    lines = [f"{message.domain} wants you to sign in with your Ethereum account:", message.address]
    lines.append("")
    if message.statement:
        lines += [message.statement, ""]
    lines += [
        f"URI: {message.uri}",
        f"Version: {message.version}",
        f"Chain ID: {message.chain_id}",
        f"Nonce: {message.nonce}",
        f"Issued At: {format_time(message.issued_at)}",
    ]
    if message.expiration_time:
        lines.append(f"Expiration Time: {format_time(message.expiration_time)}")
    if message.not_before:
        lines.append(f"Not Before: {format_time(message.not_before)}")
    if message.request_id:
        lines.append(f"Request ID: {message.request_id}")
    if message.resources:
        lines += ["Resources:", *(f"- {resource}" for resource in message.resources)]
    return "\n".join(lines)


def _parse_time(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SiweFormatError(f"{name} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise SiweFormatError(f"{name} has no time zone")
    return moment


def _address_line(lines: list[str]) -> str:
    address = lines[1]
    if not _ADDRESS.match(address):
        raise SiweFormatError("the second line is not an Ethereum address")
    if not is_checksum_address(address):
        raise SiweFormatError("the address is not EIP-55 checksummed")
    if lines[2] != "":
        raise SiweFormatError("the address must be followed by an empty line")
    return address


def _statement(rest: list[str]) -> tuple[str | None, list[str]]:
    """The optional statement line (and its empty line), and the lines after it."""
    if not rest or rest[0].startswith("URI: "):
        return None, rest
    if len(rest) < 2 or rest[1] != "":
        raise SiweFormatError("the statement must be followed by an empty line")
    return rest[0], rest[2:]


def _resources(rest: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The trailing `Resources:` list, and the lines before it."""
    if "Resources:" not in rest:
        return (), rest
    at = rest.index("Resources:")
    listed = rest[at + 1 :]
    if not listed or not all(line.startswith("- ") and len(line) > 2 for line in listed):
        raise SiweFormatError("Resources: must be followed by '- <uri>' lines only")
    return tuple(line[2:] for line in listed), rest[:at]


def _fields(rest: list[str]) -> dict[str, str]:
    """The `Label: value` lines, each at most once and in EIP-4361's order."""
    values: dict[str, str] = {}
    order = iter(_FIELDS)
    for line in rest:
        for key, label in order:
            if line.startswith(f"{label}: "):
                values[key] = line[len(label) + 2 :]
                break
        else:
            raise SiweFormatError(f"unexpected or out-of-order line {line[:40]!r}")
    missing = [label for key, label in _FIELDS if key in _REQUIRED and key not in values]
    if missing:
        raise SiweFormatError(f"missing field(s): {', '.join(missing)}")
    if whole_number(values["chain_id"], minimum=0, maximum=2**64 - 1) is None:
        raise SiweFormatError("Chain ID is not a number (ASCII digits, at most 2^64 - 1)")
    if not _NONCE.match(values["nonce"]):
        raise SiweFormatError("Nonce must be 8 to 64 letters or digits")
    return values


def _optional_time(name: str, value: str | None) -> datetime | None:
    return None if value is None else _parse_time(name, value)


def parse_message(text: str) -> SiweMessage:
    """Parse the ABNF of EIP-4361 (fields in their fixed order; the statement optional)."""
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) < 8:
        raise SiweFormatError("too few lines for an EIP-4361 message")
    header = _HEADER.match(lines[0])
    if not header:
        raise SiweFormatError("the first line is not '<domain> wants you to sign in ...'")
    address = _address_line(lines)
    statement, rest = _statement(lines[3:])
    resources, rest = _resources(rest)
    values = _fields(rest)
    return SiweMessage(
        domain=header["domain"],
        address=address,
        statement=statement,
        uri=values["uri"],
        version=values["version"],
        chain_id=int(values["chain_id"]),
        nonce=values["nonce"],
        issued_at=_parse_time("Issued At", values["issued_at"]),
        expiration_time=_optional_time("Expiration Time", values.get("expiration_time")),
        not_before=_optional_time("Not Before", values.get("not_before")),
        request_id=values.get("request_id"),
        resources=resources,
    )
