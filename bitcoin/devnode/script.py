"""Scripts as bitcoind prints them: asm, output type, regtest address, inferred descriptor."""

from __future__ import annotations

import hashlib
from typing import Any

HRP = "bcrt"
P2PKH_VERSION = 0x6F
P2SH_VERSION = 0xC4

_OPCODES = {
    0x4F: "-1",
    0x50: "OP_RESERVED",
    0x61: "OP_NOP",
    0x62: "OP_VER",
    0x63: "OP_IF",
    0x64: "OP_NOTIF",
    0x65: "OP_VERIF",
    0x66: "OP_VERNOTIF",
    0x67: "OP_ELSE",
    0x68: "OP_ENDIF",
    0x69: "OP_VERIFY",
    0x6A: "OP_RETURN",
    0x6B: "OP_TOALTSTACK",
    0x6C: "OP_FROMALTSTACK",
    0x6D: "OP_2DROP",
    0x6E: "OP_2DUP",
    0x6F: "OP_3DUP",
    0x70: "OP_2OVER",
    0x71: "OP_2ROT",
    0x72: "OP_2SWAP",
    0x73: "OP_IFDUP",
    0x74: "OP_DEPTH",
    0x75: "OP_DROP",
    0x76: "OP_DUP",
    0x77: "OP_NIP",
    0x78: "OP_OVER",
    0x79: "OP_PICK",
    0x7A: "OP_ROLL",
    0x7B: "OP_ROT",
    0x7C: "OP_SWAP",
    0x7D: "OP_TUCK",
    0x7E: "OP_CAT",
    0x7F: "OP_SUBSTR",
    0x80: "OP_LEFT",
    0x81: "OP_RIGHT",
    0x82: "OP_SIZE",
    0x83: "OP_INVERT",
    0x84: "OP_AND",
    0x85: "OP_OR",
    0x86: "OP_XOR",
    0x87: "OP_EQUAL",
    0x88: "OP_EQUALVERIFY",
    0x89: "OP_RESERVED1",
    0x8A: "OP_RESERVED2",
    0x8B: "OP_1ADD",
    0x8C: "OP_1SUB",
    0x8D: "OP_2MUL",
    0x8E: "OP_2DIV",
    0x8F: "OP_NEGATE",
    0x90: "OP_ABS",
    0x91: "OP_NOT",
    0x92: "OP_0NOTEQUAL",
    0x93: "OP_ADD",
    0x94: "OP_SUB",
    0x95: "OP_MUL",
    0x96: "OP_DIV",
    0x97: "OP_MOD",
    0x98: "OP_LSHIFT",
    0x99: "OP_RSHIFT",
    0x9A: "OP_BOOLAND",
    0x9B: "OP_BOOLOR",
    0x9C: "OP_NUMEQUAL",
    0x9D: "OP_NUMEQUALVERIFY",
    0x9E: "OP_NUMNOTEQUAL",
    0x9F: "OP_LESSTHAN",
    0xA0: "OP_GREATERTHAN",
    0xA1: "OP_LESSTHANOREQUAL",
    0xA2: "OP_GREATERTHANOREQUAL",
    0xA3: "OP_MIN",
    0xA4: "OP_MAX",
    0xA5: "OP_WITHIN",
    0xA6: "OP_RIPEMD160",
    0xA7: "OP_SHA1",
    0xA8: "OP_SHA256",
    0xA9: "OP_HASH160",
    0xAA: "OP_HASH256",
    0xAB: "OP_CODESEPARATOR",
    0xAC: "OP_CHECKSIG",
    0xAD: "OP_CHECKSIGVERIFY",
    0xAE: "OP_CHECKMULTISIG",
    0xAF: "OP_CHECKMULTISIGVERIFY",
    0xB0: "OP_NOP1",
    0xB1: "OP_CHECKLOCKTIMEVERIFY",
    0xB2: "OP_CHECKSEQUENCEVERIFY",
    0xB3: "OP_NOP4",
    0xB4: "OP_NOP5",
    0xB5: "OP_NOP6",
    0xB6: "OP_NOP7",
    0xB7: "OP_NOP8",
    0xB8: "OP_NOP9",
    0xB9: "OP_NOP10",
    0xBA: "OP_CHECKSIGADD",
    0xFF: "OP_INVALIDOPCODE",
}
for _n in range(1, 17):
    _OPCODES[0x50 + _n] = str(_n)


def _script_num(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def iter_ops(script: bytes) -> list[tuple[int, bytes | None]]:
    """(opcode, pushed data or None); raises ValueError on a truncated push."""
    ops: list[tuple[int, bytes | None]] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if op <= 0x4E:
            if op < 0x4C:
                size = op
            else:
                width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
                if i + width > len(script):
                    raise ValueError("truncated push")
                size = int.from_bytes(script[i : i + width], "little")
                i += width
            if i + size > len(script):
                raise ValueError("truncated push")
            ops.append((op, script[i : i + size]))
            i += size
        else:
            ops.append((op, None))
    return ops


def to_asm(script: bytes) -> str:
    """bitcoind's ScriptToAsmStr (without sighash-type decoding)."""
    parts: list[str] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if op > 0x4E:
            parts.append(_OPCODES.get(op, "OP_UNKNOWN"))
            continue
        size = op
        if op >= 0x4C:
            width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
            size = int.from_bytes(script[i : i + width], "little")
            i += width
            if i > len(script):
                parts.append("[error]")
                break
        if i + size > len(script):
            parts.append("[error]")
            break
        data = script[i : i + size]
        i += size
        parts.append(str(_script_num(data)) if len(data) <= 4 else data.hex())
    return " ".join(parts)


# --- bech32 / bech32m (BIP-173, BIP-350) ---------------------------------------------------
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST = 0x2BC830A3


def _polymod(values: list[int]) -> int:
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    ret: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise ValueError("bad value")
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise ValueError("bad padding")
    return ret


def segwit_address(version: int, program: bytes) -> str:
    data = [version, *_convertbits(program, 8, 5, True)]
    const = 1 if version == 0 else _BECH32M_CONST
    polymod = _polymod([*_hrp_expand(HRP), *data, 0, 0, 0, 0, 0, 0]) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return HRP + "1" + "".join(_CHARSET[d] for d in data + checksum)


def _decode_segwit(address: str) -> bytes:
    if address.lower() != address and address.upper() != address:
        raise ValueError("mixed case")
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address) or len(address) > 90 or address[:pos] != HRP:
        raise ValueError("not a regtest bech32 address")
    if any(c not in _CHARSET for c in address[pos + 1 :]):
        raise ValueError("bad character")
    data = [_CHARSET.find(c) for c in address[pos + 1 :]]
    const = _polymod(_hrp_expand(HRP) + data)
    version = data[0]
    if const != (1 if version == 0 else _BECH32M_CONST):
        raise ValueError("bad checksum")
    program = bytes(_convertbits(data[1:-6], 5, 8, False))
    if version > 16 or not 2 <= len(program) <= 40:
        raise ValueError("bad program")
    if version == 0 and len(program) not in (20, 32):
        raise ValueError("bad v0 program")
    return bytes([0x50 + version if version else 0, len(program)]) + program


# --- base58check ---------------------------------------------------------------------------
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58check_encode(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, rem = divmod(n, 58)
        out = _B58[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _b58check_decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58:
            raise ValueError("bad base58 character")
        n = n * 58 + _B58.index(c)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    data = b"\0" * (len(text) - len(text.lstrip("1"))) + body
    payload, checksum = data[:-4], data[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise ValueError("bad checksum")
    return payload


def address_to_script(address: str) -> bytes:
    """The scriptPubKey of a regtest address; ValueError if it is not one."""
    if address[:5].lower() == HRP + "1":
        return _decode_segwit(address)
    payload = _b58check_decode(address)
    if len(payload) != 21:
        raise ValueError("bad base58 payload")
    if payload[0] == P2PKH_VERSION:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if payload[0] == P2SH_VERSION:
        return b"\xa9\x14" + payload[1:] + b"\x87"
    raise ValueError("not a regtest address")


def classify(spk: bytes) -> tuple[str, str | None]:
    """(bitcoind output type, regtest address or None)."""
    n = len(spk)
    if n == 25 and spk[:3] == b"\x76\xa9\x14" and spk[23:] == b"\x88\xac":
        return "pubkeyhash", _b58check_encode(bytes([P2PKH_VERSION]) + spk[3:23])
    if n == 23 and spk[:2] == b"\xa9\x14" and spk[22] == 0x87:
        return "scripthash", _b58check_encode(bytes([P2SH_VERSION]) + spk[2:22])
    if n in (35, 67) and spk[0] == n - 2 and spk[-1] == 0xAC:
        return "pubkey", None
    if n >= 1 and spk[0] == 0x6A:
        return "nulldata", None
    if spk == b"\x51\x02\x4e\x73":
        return "anchor", segwit_address(1, spk[2:])
    if 4 <= n <= 42 and (spk[0] == 0 or 0x51 <= spk[0] <= 0x60) and spk[1] == n - 2:
        return _classify_witness(0 if spk[0] == 0 else spk[0] - 0x50, spk[2:])
    return "nonstandard", None


# bitcoind's names of the witness programs it knows, by (version, program length).
_WITNESS_TYPES = {
    (0, 20): "witness_v0_keyhash",
    (0, 32): "witness_v0_scripthash",
    (1, 32): "witness_v1_taproot",
}


def _classify_witness(version: int, program: bytes) -> tuple[str, str | None]:
    known = _WITNESS_TYPES.get((version, len(program)))
    if known is not None:
        return known, segwit_address(version, program)
    if version != 0:
        return "witness_unknown", segwit_address(version, program)
    return "nonstandard", None  # a v0 program of another length


# --- descriptors (BIP-380 checksum) --------------------------------------------------------
_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    'ijklmnopqrstuvwxyzABCDEFGH`#"\\ '
)
_DESC_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def descriptor_checksum(desc: str) -> str:
    symbols: list[int] = []
    groups: list[int] = []
    for c in desc:
        v = _INPUT_CHARSET.find(c)
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    chk = 1
    for value in [*symbols, 0, 0, 0, 0, 0, 0, 0, 0]:
        top = chk >> 35
        chk = (chk & 0x7FFFFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _DESC_GENERATOR[i] if ((top >> i) & 1) else 0
    chk ^= 1
    return "".join(_CHARSET[(chk >> (5 * (7 - i))) & 31] for i in range(8))


def infer_descriptor(spk: bytes, kind: str, address: str | None) -> str:
    if kind == "witness_v1_taproot":
        desc = f"rawtr({spk[2:].hex()})"
    elif kind == "pubkey":
        desc = f"pk({spk[1:-1].hex()})"
    elif address is not None:
        desc = f"addr({address})"
    else:
        desc = f"raw({spk.hex()})"
    return f"{desc}#{descriptor_checksum(desc)}"


def script_pubkey_json(spk: bytes) -> dict[str, Any]:
    kind, address = classify(spk)
    out: dict[str, Any] = {
        "asm": to_asm(spk),
        "desc": infer_descriptor(spk, kind, address),
        "hex": spk.hex(),
    }
    if address is not None:
        out["address"] = address
    out["type"] = kind
    return out
