"""Typed errors of the EVM tooling, and the decoding of revert data into a readable reason."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector

ERROR_STRING_SELECTOR = "0x08c379a0"  # Error(string)
PANIC_SELECTOR = "0x4e487b71"  # Panic(uint256)


class EvmError(Exception):
    """Base of the errors raised by chainwatch.evm."""


class InvalidInput(EvmError, ValueError):
    """An argument was rejected before anything was sent to the chain."""


class ChainIdMismatch(EvmError):
    """The node serves another chain than the one configured; nothing was sent."""

    def __init__(self, *, expected: int, actual: int) -> None:
        super().__init__(f"the EVM node serves chain id {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


class NodeRejected(EvmError):
    """The node refused a transaction for a reason other than a revert (funds, nonce, gas)."""


class ContractRevert(EvmError):
    """A contract call reverted; `reason` is the decoded revert reason."""

    def __init__(self, function: str, reason: str, data: str | None = None) -> None:
        super().__init__(f"{function} reverted: {reason}")
        self.function = function
        self.reason = reason
        self.data = data


def _error_signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(_abi_type(i) for i in entry.get('inputs', []))})"


def _abi_type(entry: dict[str, Any]) -> str:
    kind = str(entry["type"])
    if kind.startswith("tuple"):
        return f"({','.join(_abi_type(c) for c in entry['components'])}){kind[5:]}"
    return kind


def decode_revert_data(data: str | None, abis: Iterable[list[dict[str, Any]]] = ()) -> str:
    """The reason in revert data: Error(string), Panic(code), or a custom error of `abis`."""
    if not data or not data.startswith("0x") or len(data) < 10:
        return "execution reverted without a reason"
    selector, payload = data[:10].lower(), bytes.fromhex(data[10:])
    try:
        if selector == ERROR_STRING_SELECTOR:
            (reason,) = abi_decode(["string"], payload)
            return str(reason)
        if selector == PANIC_SELECTOR:
            (code,) = abi_decode(["uint256"], payload)
            return f"panic 0x{code:02x}"
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                signature = _error_signature(entry)
                if "0x" + function_signature_to_4byte_selector(signature).hex() == selector:
                    types = [_abi_type(i) for i in entry.get("inputs", [])]
                    values = abi_decode(types, payload)
                    return f"{entry['name']}({', '.join(str(v) for v in values)})"
    except (DecodingError, ValueError):  # malformed revert data still deserves a message
        return f"execution reverted with undecodable data {data}"
    return f"execution reverted with unknown error {selector}"
