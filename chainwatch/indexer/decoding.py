"""Decoding the logs of BtcCollateralLoan and EtherSwap into plain JSON-able arguments.

The event ABI is taken from the compiled artifacts when they are installed, and must equal the
protocol's signatures (PROTOCOL.md), which are also the fallback: the deployed seed contracts
emit exactly these, so the indexer decodes them whatever we compiled.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from eth_utils import keccak, to_checksum_address

logger = logging.getLogger(__name__)

LOAN_CONTRACT = "BtcCollateralLoan"
SWAP_CONTRACT = "EtherSwap"

# PROTOCOL.md, verbatim: `*` marks an indexed parameter.
PROTOCOL_EVENTS: dict[str, tuple[str, ...]] = {
    LOAN_CONTRACT: (
        "LenderUpdated(address* lender, string btcPubkey)",
        "LoanRequested(uint256* loanId, address* borrower, uint256 amount, string btcAddress)",
        "LenderPreimageHashAssociated(uint256* loanId, address* lender,"
        " bytes32 preimageHashLender)",
        "LoanOffered(uint256* loanId, address* lender, uint256 amount, uint256 bondAmount)",
        "LoanActivated(uint256* loanId, address* borrower, bytes32 preimageBorrower)",
        "LoanRefundedToLender(uint256* loanId, address* lender)",
        "RepaymentAttempted(uint256* loanId, address* borrower, uint256 amount)",
        "RepaymentAccepted(uint256* loanId, address* lender, bytes32 preimageLender)",
        "RepaymentRefundedToBorrowerWithBond(uint256* loanId, address* borrower,"
        " uint256 bondAmount)",
        "ParametersUpdated(uint256 loanDuration, uint256 timelockLoanReq,"
        " uint256 timelockBtcEscrow, uint256 timelockRepaymentAccept,"
        " uint256 timelockBtcCollateral)",
        "LoanDefaulted(uint256* loanId, address* lender, uint256 bondAmount)",
        "LoanDeleted(uint256* loanId, address* borrower)",
        "EtherSwapAddressSet(address* etherSwapAddress)",
        "OwnershipTransferred(address* previousOwner, address* newOwner)",
    ),
    SWAP_CONTRACT: (
        "Lockup(bytes32* preimageHash, uint256 amount, address claimAddress,"
        " address* refundAddress, uint256 timelock)",
        "Claim(bytes32* preimageHash, bytes32 preimage)",
        "Refund(bytes32* preimageHash)",
    ),
}

_SIGNATURE = re.compile(r"^(\w+)\((.*)\)$")


class UnknownLog(ValueError):
    """A log whose topic0 is none of our events (another contract at the address, or a bug)."""


@dataclass(frozen=True)
class EventParam:
    name: str
    type: str
    indexed: bool


@dataclass(frozen=True)
class EventSpec:
    contract_name: str
    name: str
    params: tuple[EventParam, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(p.type for p in self.params)})"

    @property
    def topic0(self) -> str:
        return "0x" + keccak(text=self.signature).hex()


@dataclass(frozen=True)
class DecodedLog:
    contract_name: str
    event_name: str
    args: dict[str, Any]

    @property
    def loan_id(self) -> Decimal | None:
        value = self.args.get("loanId")
        return Decimal(value) if value is not None else None

    def delivery_key(self, contract_address: str) -> str:
        """Events of one key are handed on in order: a loan, a swap, or the contract itself.

        The key carries the emitting contract's address: a contract redeployed on the same
        chain counts its loans from 1 again, and its loan 1 is not the old contract's."""
        address = contract_address.lower()
        if "loanId" in self.args:
            return loan_delivery_key(address, self.args["loanId"])
        if self.contract_name == SWAP_CONTRACT:
            return f"swap:{address}:{self.args['preimageHash']}"
        return f"contract:{address}"


def loan_delivery_key(contract_address: str, loan_id: int | Decimal) -> str:
    """The delivery key of a loan's events: the contract's address and the loan's id."""
    return f"loan:{contract_address.lower()}:{int(loan_id)}"


def parse_signature(contract_name: str, text: str) -> EventSpec:
    match = _SIGNATURE.match(text.strip())
    if not match:
        raise ValueError(f"not an event signature: {text!r}")
    params = []
    for part in filter(None, (p.strip() for p in match.group(2).split(","))):
        type_, name = part.split()
        params.append(EventParam(name=name, type=type_.rstrip("*"), indexed=type_.endswith("*")))
    return EventSpec(contract_name, match.group(1), tuple(params))


def specs_from_abi(contract_name: str, abi: list[dict[str, Any]]) -> tuple[EventSpec, ...]:
    return tuple(
        EventSpec(
            contract_name,
            item["name"],
            tuple(EventParam(i["name"], i["type"], bool(i["indexed"])) for i in item["inputs"]),
        )
        for item in abi
        if item.get("type") == "event"
    )


def protocol_specs() -> tuple[EventSpec, ...]:
    return tuple(
        parse_signature(contract, text)
        for contract, signatures in PROTOCOL_EVENTS.items()
        for text in signatures
    )


def _artifact_abi(contract_name: str) -> list[dict[str, Any]] | None:
    from chainwatch.evm.artifacts import ArtifactError, load_abi

    try:
        return load_abi(contract_name)
    except ArtifactError:
        return None


class Decoder:
    """topic0 → event spec, for the events of both contracts."""

    def __init__(self, specs: tuple[EventSpec, ...]) -> None:
        self.by_topic = {spec.topic0: spec for spec in specs}
        if len(self.by_topic) != len(specs):
            raise ValueError("two events share a signature")
        # Every type of the protocol's events is a one-word value, a string or bytes: decoded
        # by slicing, much faster than a general ABI decoder.
        for spec in specs:
            for param in spec.params:
                if not (_is_static(param.type) or param.type in ("string", "bytes")):
                    raise ValueError(f"{spec.name}.{param.name}: {param.type} is not supported")

    def decode(self, log: Any) -> DecodedLog:
        topics = [_hex(t) for t in log["topics"]]
        if not topics or topics[0] not in self.by_topic:
            raise UnknownLog(f"unknown topic0 {topics[0] if topics else None}")
        spec = self.by_topic[topics[0]]
        indexed = [p for p in spec.params if p.indexed]
        if len(topics) != len(indexed) + 1:
            raise UnknownLog(f"{spec.name}: {len(topics) - 1} topics, ABI has {len(indexed)}")
        args: dict[str, Any] = {}
        try:
            for param, topic in zip(indexed, topics[1:], strict=True):
                args[param.name] = _word(param.type, bytes.fromhex(topic[2:]))
            data = log["data"]
            raw = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
            unindexed = [p for p in spec.params if not p.indexed]
            for n, param in enumerate(unindexed):
                args[param.name] = _slot(param.type, raw, n)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnknownLog(f"{spec.name}: malformed log: {exc}") from exc
        ordered = {p.name: args[p.name] for p in spec.params}
        return DecodedLog(spec.contract_name, spec.name, ordered)


def _hex(value: Any) -> str:
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


_STATIC: set[str] = set()
_ZERO12 = bytes(12)


def _is_static(abi_type: str) -> bool:
    """A type that fills one 32-byte word (all of our events' types but string)."""
    static = (
        abi_type in ("address", "bool")
        or abi_type.startswith(("uint", "int"))
        or (abi_type.startswith("bytes") and abi_type != "bytes")
    )
    if static:
        _STATIC.add(abi_type)
    return static


@lru_cache(maxsize=65536)
def _checksum(address: str) -> str:
    return to_checksum_address(address)


def _address_word(abi_type: str, word: bytes) -> str:
    if word[:12] != _ZERO12:
        raise ValueError("address with non-zero padding")
    return _checksum("0x" + word[12:].hex())


def _uint_word(abi_type: str, word: bytes) -> int:
    value = int.from_bytes(word, "big")
    if value >> int(abi_type[4:] or 256):
        raise ValueError(f"{abi_type} out of range")
    return value


def _int_word(abi_type: str, word: bytes) -> int:
    value = int.from_bytes(word, "big", signed=True)
    bits = int(abi_type[3:] or 256)
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise ValueError(f"{abi_type} out of range")
    return value


def _bool_word(abi_type: str, word: bytes) -> bool:
    if word[:31] != bytes(31) or word[31] > 1:
        raise ValueError("bool is 0 or 1")
    return bool(word[31])


def _fixed_bytes_word(abi_type: str, word: bytes) -> str:
    return "0x" + word[: int(abi_type[5:])].hex()


@cache  # a handful of types; the hot path looks each up once
def _word_decoder(abi_type: str) -> Callable[[str, bytes], Any] | None:
    """The decoder of a static type's word; None for an indexed dynamic value (bytes, string,
    arrays), whose topic is its keccak hash."""
    if abi_type in ("address", "bool"):
        return _address_word if abi_type == "address" else _bool_word
    if abi_type.startswith("uint"):
        return _uint_word
    if abi_type.startswith("int"):
        return _int_word
    if abi_type.startswith("bytes") and abi_type != "bytes":
        return _fixed_bytes_word
    return None


def _word(abi_type: str, word: bytes) -> Any:
    """One ABI word (a topic or a static data slot), as eth_abi would decode it, made JSON-able;
    much faster than eth_abi for the hot path."""
    if len(word) != 32:
        raise ValueError(f"a word is 32 bytes, got {len(word)}")
    decode = _word_decoder(abi_type)
    return "0x" + word.hex() if decode is None else decode(abi_type, word)


def _slot(abi_type: str, raw: bytes, n: int) -> Any:
    """Data slot n: a one-word value in place, or a string/bytes behind its offset."""
    word = raw[32 * n : 32 * n + 32]
    if abi_type not in ("string", "bytes"):
        return _word(abi_type, word)
    offset = _word("uint256", word)
    length = _word("uint256", raw[offset : offset + 32])
    if offset + 32 + length > len(raw):
        raise ValueError(f"{abi_type} runs past the data")
    value = raw[offset + 32 : offset + 32 + length]
    return value.decode("utf-8") if abi_type == "string" else "0x" + value.hex()


@cache
def default_decoder() -> Decoder:
    """Artifact ABIs when installed (checked against the protocol), else the protocol's."""
    specs = protocol_specs()
    for contract in PROTOCOL_EVENTS:
        abi = _artifact_abi(contract)
        if abi is None:
            continue
        compiled = {s.signature: s for s in specs_from_abi(contract, abi)}
        for spec in (s for s in specs if s.contract_name == contract):
            if compiled.get(spec.signature) != spec:
                # Decoding follows the protocol (the deployed seed contracts emit it).
                logger.warning("%s artifact's %s differs from PROTOCOL.md", contract, spec.name)
    return Decoder(specs)
