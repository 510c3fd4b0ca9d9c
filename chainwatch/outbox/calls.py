"""Encoding a contract call from its ABI, and decoding a revert's reason."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


class CallError(ValueError):
    """The call cannot be built: unknown function, wrong arguments."""


# A secret argument (the lender's preimage, revealed by the call itself) is stored in the outbox
# row as a marker such as "$lender_preimage" and resolved only when the call is encoded to be
# signed, so the secret never sits in a row or an admin page before it is public. The consumer
# registers the resolvers (chainwatch never knows what the secret is).
SecretResolver = Callable[[str], bytes]
_secret_resolvers: dict[str, SecretResolver] = {}


def register_secret_resolver(marker: str, resolve: SecretResolver) -> None:
    """`resolve(loan_ref)` returns the value `marker` stands for in that loan's calls."""
    if not marker.startswith("$"):
        raise ValueError("a secret marker starts with $")
    _secret_resolvers[marker] = resolve


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$")


def resolve_secrets(loan_ref: str, args: list[Any]) -> list[Any]:
    """The arguments with every marker replaced by its secret (at signing time only)."""
    resolved = []
    for value in args:
        if _is_marker(value):
            if value not in _secret_resolvers:
                raise CallError(f"no resolver registered for {value}")
            value = _secret_resolvers[value](loan_ref)
        resolved.append(value)
    return resolved


def carries_secret(args: list[Any]) -> bool:
    """True when the call reveals a secret: it is never estimated or simulated with it."""
    return any(_is_marker(value) for value in args)


def placeholder_secrets(args: list[Any]) -> list[Any]:
    """The arguments with every marker as 32 zero bytes: to check a call's shape on enqueue."""
    return [bytes(32) if _is_marker(value) else value for value in args]


@cache
def contract_abi(contract_name: str) -> tuple[dict[str, Any], ...]:
    from chainwatch.evm.artifacts import ArtifactError, load_abi

    try:
        return tuple(load_abi(contract_name))
    except ArtifactError as exc:
        raise CallError(f"no ABI for {contract_name}: {exc}") from exc


def _function(contract_name: str, function: str, arity: int) -> dict[str, Any]:
    for item in contract_abi(contract_name):
        is_function = item.get("type") == "function" and item["name"] == function
        if is_function and len(item["inputs"]) == arity:
            return item
    raise CallError(f"{contract_name} has no function {function} taking {arity} arguments")


def _convert(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type.startswith("bytes"):
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
        size = abi_type[5:]
        if size and len(raw) != int(size):
            raise CallError(f"{abi_type} needs {size} bytes, got {len(raw)}")
        return raw
    if abi_type.startswith(("uint", "int")):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CallError(f"{abi_type} needs an integer, got {value!r}")
        return int(value)
    return value


def encode_call(contract_name: str, function: str, args: list[Any]) -> str:
    """0x-hex call data, or CallError with the reason."""
    item = _function(contract_name, function, len(args))
    types = [i["type"] for i in item["inputs"]]
    try:
        values = [_convert(t, v) for t, v in zip(types, args, strict=True)]
        body = abi_encode(types, values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise CallError(f"{function}({', '.join(types)}): {exc}") from exc
    selector = keccak(text=f"{function}({','.join(types)})")[:4]
    return "0x" + (selector + body).hex()


def revert_reason(data: Any, message: str = "") -> str:
    """The reason of a revert from its return data (Error(string), Panic, custom error)."""
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        raw = bytes.fromhex(data[2:])
        if raw[:4] == ERROR_SELECTOR:
            (reason,) = abi_decode(["string"], raw[4:])
            return str(reason)
        if raw[:4] == PANIC_SELECTOR:
            (code,) = abi_decode(["uint256"], raw[4:])
            return f"panic 0x{code:02x}"
        return f"custom error 0x{raw[:4].hex()}"
    return message.removeprefix("execution reverted: ") or "reverted without a reason"
