"""Hex, networks, addresses and dust: the small codecs everything else relies on."""

from __future__ import annotations

import hashlib
from typing import Final, Literal, get_args

from bitcoinutils import bech32

from vaultero.errors import (
    InvalidAddressError,
    InvalidAmountError,
    InvalidHexError,
    InvalidLengthError,
    UnknownNetworkError,
)

Network = Literal["mainnet", "testnet", "signet", "regtest"]
NETWORKS: Final[tuple[str, ...]] = get_args(Network)

_HRP: Final[dict[str, str]] = {
    "mainnet": "bc",
    "testnet": "tb",
    "signet": "tb",
    "regtest": "bcrt",
}
# Base58 version bytes (P2PKH, P2SH) per network.
_BASE58_VERSIONS: Final[dict[str, tuple[int, int]]] = {
    "mainnet": (0x00, 0x05),
    "testnet": (0x6F, 0xC4),
    "signet": (0x6F, 0xC4),
    "regtest": (0x6F, 0xC4),
}
_B58_ALPHABET: Final[str] = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

# Bitcoin Core's dust relay fee (3 sat/vB) applied to an output plus the input that spends it.
DUST_RELAY_FEERATE: Final[int] = 3


def check_network(network: str) -> Network:
    """Return `network` if it is one we know; otherwise raise UnknownNetworkError."""
    if network == "mainnet":
        return "mainnet"
    if network == "testnet":
        return "testnet"
    if network == "signet":
        return "signet"
    if network == "regtest":
        return "regtest"
    raise UnknownNetworkError(
        f"unknown network {network!r}: expected one of mainnet, testnet, signet, regtest"
    )


def parse_hex(value: str | bytes, *, name: str, length: int | None = None) -> bytes:
    """Decode `value` (hex text, or bytes taken as they are) and check its byte length."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise InvalidHexError(f"{name} is not hex") from None
    else:
        raise InvalidHexError(f"{name} is not hex")
    if length is not None and len(raw) != length:
        raise InvalidLengthError(
            f"{name} must be {length} bytes ({2 * length} hex characters), got {len(raw)} bytes"
        )
    return raw


def check_sats(value: object, *, name: str, allow_zero: bool = False) -> int:
    """Amounts are integer satoshis: never float, bool or negative."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmountError(f"{name} must be an integer number of sats, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidAmountError(f"{name} must be positive, got {value}")
    return value


_BECH32_CHARSET: Final[str] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST: Final[int] = 0x2BC830A3
_BECH32_GEN: Final[tuple[int, ...]] = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _BECH32_GEN[i]
    return chk


def taproot_address(output_key: bytes, network: str) -> str:
    """The bech32m (BIP-350) address of a segwit v1 output key.

    Encoded here rather than with bitcoin-utils, whose encoder decodes every address again to
    check itself (two thirds of the cost of deriving an escrow address)."""
    hrp = _HRP[check_network(network)]
    acc = int.from_bytes(output_key, "big") << 4  # 256 bits padded to 52 five-bit groups
    groups = [(acc >> (5 * i)) & 31 for i in range(51, -1, -1)]
    data = [1, *groups]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    checksum = _polymod(expanded + data + [0] * 6) ^ _BECH32M_CONST
    data += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[d] for d in data)


def p2tr_script_pubkey(output_key: bytes) -> bytes:
    return b"\x51\x20" + output_key


def _base58check_decode(text: str) -> bytes:
    number = 0
    for char in text:
        digit = _B58_ALPHABET.find(char)
        if digit < 0:
            raise InvalidAddressError(f"address {text!r} is not valid base58")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    pad = len(text) - len(text.lstrip("1"))
    raw = b"\x00" * pad + body
    if len(raw) < 5:
        raise InvalidAddressError(f"address {text!r} is too short")
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise InvalidAddressError(f"address {text!r} has a bad checksum")
    return payload


def address_to_script_pubkey(address: str, network: str) -> bytes:
    """The scriptPubKey an address pays to; the address must belong to `network`."""
    net = check_network(network)
    if not isinstance(address, str) or not address:
        raise InvalidAddressError(f"address {address!r} is not a string")
    hrp = _HRP[net]
    lowered = address.lower()
    if lowered.startswith(hrp + "1"):
        version, program = bech32.decode(hrp, address)
        if version is None or program is None:
            raise InvalidAddressError(f"address {address!r} is not a valid {net} segwit address")
        opcode = 0 if version == 0 else 0x50 + int(version)
        return bytes([opcode, len(program)]) + bytes(program)
    if any(lowered.startswith(other + "1") for other in _HRP.values()):
        raise InvalidAddressError(f"address {address!r} is not a {net} address")
    payload = _base58check_decode(address)
    p2pkh, p2sh = _BASE58_VERSIONS[net]
    if len(payload) == 21 and payload[0] == p2pkh:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if len(payload) == 21 and payload[0] == p2sh:
        return b"\xa9\x14" + payload[1:] + b"\x87"
    raise InvalidAddressError(f"address {address!r} is not a valid {net} address")


def dust_limit(script_pubkey: bytes) -> int:
    """Bitcoin Core's GetDustThreshold at the default 3 sat/vB dust relay fee."""
    output_size = 8 + 1 + len(script_pubkey)
    is_witness = (
        4 <= len(script_pubkey) <= 42
        and (script_pubkey[0] == 0 or 0x51 <= script_pubkey[0] <= 0x60)
        and script_pubkey[1] == len(script_pubkey) - 2
    )
    # The spending input: outpoint 36 + sequence 4 + scriptSig (1 + 107), witness discounted.
    input_size = 32 + 4 + 1 + (107 // 4) + 4 if is_witness else 32 + 4 + 1 + 107 + 4
    return (output_size + input_size) * DUST_RELAY_FEERATE
