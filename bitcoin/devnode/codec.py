"""Consensus serialisation of transactions and blocks (BIP-141 witness format), in pure Python.

The devnode parses what it stores and serves; the kernel alone decides validity.

Why a second codec beside `vaultero.txcodec`: the devnode stands in for bitcoind in every
test, so it must not share code with what it tests. Were it to parse with vaultero's codec, a
bug there (a wrong txid, a mis-read witness) would be mirrored by the node and go unseen; two
independent implementations, judged by libbitcoinkernel, check each other. It also does what
vaultero has no business doing (blocks, headers, merkle roots, difficulty).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field


class DecodeError(ValueError):
    """Bytes that are not a transaction or block."""


def dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def hash_hex(h: bytes) -> str:
    """A hash in RPC display order (byte-reversed)."""
    return h[::-1].hex()


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


class Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise DecodeError("unexpected end of data")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def i32(self) -> int:
        return int(struct.unpack("<i", self.take(4))[0])

    def i64(self) -> int:
        return int(struct.unpack("<q", self.take(8))[0])

    def varint(self) -> int:
        first = self.u8()
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        value = int.from_bytes(self.take(size), "little")
        if value > 0x02000000:
            raise DecodeError("size too large")
        return value

    def var_bytes(self) -> bytes:
        return self.take(self.varint())


@dataclass(frozen=True)
class TxIn:
    prev_txid: bytes  # internal byte order
    prev_vout: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...] = ()

    @property
    def outpoint(self) -> tuple[bytes, int]:
        return (self.prev_txid, self.prev_vout)


@dataclass(frozen=True)
class TxOut:
    value: int  # sats
    script_pubkey: bytes


@dataclass(frozen=True)
class Tx:
    version: int
    vin: tuple[TxIn, ...]
    vout: tuple[TxOut, ...]
    locktime: int
    _cache: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.vin)

    def serialize(self, *, witness: bool = True) -> bytes:
        key = "raw" if witness else "stripped"
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        with_witness = witness and self.has_witness
        parts = [struct.pack("<i", self.version)]
        if with_witness:
            parts.append(b"\x00\x01")
        parts.append(compact_size(len(self.vin)))
        for txin in self.vin:
            parts += [
                txin.prev_txid,
                struct.pack("<I", txin.prev_vout),
                compact_size(len(txin.script_sig)),
                txin.script_sig,
                struct.pack("<I", txin.sequence),
            ]
        parts.append(compact_size(len(self.vout)))
        for txout in self.vout:
            parts += [
                struct.pack("<q", txout.value),
                compact_size(len(txout.script_pubkey)),
                txout.script_pubkey,
            ]
        if with_witness:
            for txin in self.vin:
                parts.append(compact_size(len(txin.witness)))
                for item in txin.witness:
                    parts += [compact_size(len(item)), item]
        parts.append(struct.pack("<I", self.locktime))
        data = b"".join(parts)
        self._cache[key] = data
        return data

    @property
    def txid(self) -> bytes:
        if "txid" not in self._cache:
            self._cache["txid"] = dsha256(self.serialize(witness=False))
        return self._cache["txid"]

    @property
    def wtxid(self) -> bytes:
        if "wtxid" not in self._cache:
            self._cache["wtxid"] = dsha256(self.serialize())
        return self._cache["wtxid"]

    @property
    def is_coinbase(self) -> bool:
        return len(self.vin) == 1 and self.vin[0].prev_txid == b"\x00" * 32

    @property
    def size(self) -> int:
        return len(self.serialize())

    @property
    def weight(self) -> int:
        return len(self.serialize(witness=False)) * 3 + self.size

    @property
    def vsize(self) -> int:
        return (self.weight + 3) // 4


def read_tx(reader: Reader) -> Tx:
    version = reader.i32()
    n_in = reader.varint()
    segwit = False
    if n_in == 0:
        flag = reader.u8()
        if flag != 1:
            raise DecodeError("bad witness flag")
        segwit = True
        n_in = reader.varint()
    vin = []
    for _ in range(n_in):
        prev = reader.take(32)
        index = reader.u32()
        script_sig = reader.var_bytes()
        sequence = reader.u32()
        vin.append((prev, index, script_sig, sequence))
    vout = []
    for _ in range(reader.varint()):
        value = reader.i64()
        vout.append(TxOut(value, reader.var_bytes()))
    witnesses: list[tuple[bytes, ...]] = [()] * len(vin)
    if segwit:
        witnesses = []
        for _ in vin:
            witnesses.append(tuple(reader.var_bytes() for _ in range(reader.varint())))
        if not any(witnesses):
            raise DecodeError("superfluous witness record")
    locktime = reader.u32()
    return Tx(
        version,
        tuple(
            TxIn(prev, index, script_sig, sequence, witness)
            for (prev, index, script_sig, sequence), witness in zip(vin, witnesses, strict=True)
        ),
        tuple(vout),
        locktime,
    )


def parse_tx(data: bytes) -> Tx:
    """A whole serialised transaction (trailing bytes are an error, as in bitcoind)."""
    reader = Reader(data)
    try:
        tx = read_tx(reader)
    except (DecodeError, struct.error, KeyError) as exc:
        raise DecodeError(str(exc)) from exc
    if reader.pos != len(data):
        raise DecodeError("trailing data")
    return tx


@dataclass(frozen=True)
class Header:
    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (
            struct.pack("<i", self.version)
            + self.prev_hash
            + self.merkle_root
            + struct.pack("<III", self.time, self.bits, self.nonce)
        )

    @property
    def hash(self) -> bytes:
        return dsha256(self.serialize())


def parse_header(data: bytes) -> Header:
    version, prev, merkle, time, bits, nonce = struct.unpack("<i32s32sIII", data[:80])
    return Header(version, prev, merkle, time, bits, nonce)


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[Tx, ...]
    raw: bytes

    @property
    def hash(self) -> bytes:
        return self.header.hash


def parse_block(data: bytes) -> Block:
    if len(data) < 81:
        raise DecodeError("block too short")
    reader = Reader(data, 80)
    try:
        txs = tuple(read_tx(reader) for _ in range(reader.varint()))
    except (DecodeError, struct.error, KeyError) as exc:
        raise DecodeError(str(exc)) from exc
    if reader.pos != len(data):
        raise DecodeError("trailing data")
    return Block(parse_header(data), txs, data)


def merkle_root(hashes: list[bytes]) -> bytes:
    if not hashes:
        return b"\x00" * 32
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def bits_to_target(bits: int) -> int:
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    return mantissa << (8 * (exponent - 3)) if exponent > 3 else mantissa >> (8 * (3 - exponent))


def block_work(bits: int) -> int:
    target = bits_to_target(bits)
    return (1 << 256) // (target + 1)


def difficulty(bits: int) -> float:
    """bitcoind's GetDifficulty."""
    shift = (bits >> 24) & 0xFF
    diff = 0x0000FFFF / (bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def script_number(n: int) -> bytes:
    """CScriptNum encoding (minimal, sign bit in the last byte)."""
    if n == 0:
        return b""
    negative = n < 0
    value = abs(n)
    out = bytearray()
    while value:
        out.append(value & 0xFF)
        value >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if negative else 0)
    elif negative:
        out[-1] |= 0x80
    return bytes(out)


def push_int(n: int) -> bytes:
    """`CScript() << n`: OP_0, OP_1..OP_16, or a minimal push."""
    if n == 0:
        return b"\x00"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    encoded = script_number(n)
    return bytes([len(encoded)]) + encoded


def push_data(data: bytes) -> bytes:
    n = len(data)
    if n < 0x4C:
        return bytes([n]) + data
    if n <= 0xFF:
        return b"\x4c" + bytes([n]) + data
    if n <= 0xFFFF:
        return b"\x4d" + struct.pack("<H", n) + data
    return b"\x4e" + struct.pack("<I", n) + data
