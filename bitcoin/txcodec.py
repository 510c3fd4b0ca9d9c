"""A small, exact codec for (segwit) transactions and the BIP-341 sighash.

The signer computes the digest it signs from the bytes it was given, nothing re-encoded, so
what it signs is provably the registered transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from io import BytesIO

SEQUENCE_RBF = 0xFFFFFFFD
TAPSCRIPT_LEAF_VERSION = 0xC0


class TxDecodeError(ValueError):
    """The bytes are not a transaction."""


def _read(stream: BytesIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TxDecodeError("truncated transaction")
    return data


def _read_varint(stream: BytesIO) -> int:
    first = _read(stream, 1)[0]
    if first < 0xFD:
        return first
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(_read(stream, size), "little")


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _push(data: bytes) -> bytes:
    return compact_size(len(data)) + data


@dataclass(frozen=True)
class TxIn:
    prev_txid: str  # display (RPC) byte order
    prev_vout: int
    script_sig: bytes = b""
    sequence: int = SEQUENCE_RBF
    witness: tuple[bytes, ...] = ()

    def outpoint_bytes(self) -> bytes:
        return bytes.fromhex(self.prev_txid)[::-1] + self.prev_vout.to_bytes(4, "little")


@dataclass(frozen=True)
class TxOut:
    value: int  # sats
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return self.value.to_bytes(8, "little") + _push(self.script_pubkey)


@dataclass(frozen=True)
class Tx:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    @classmethod
    def from_hex(cls, raw_hex: str) -> Tx:
        try:
            raw = bytes.fromhex(raw_hex)
        except ValueError:
            raise TxDecodeError("transaction hex is not hex") from None
        stream = BytesIO(raw)
        version = int.from_bytes(_read(stream, 4), "little")
        count = _read_varint(stream)
        segwit = False
        if count == 0:
            if _read(stream, 1) != b"\x01":
                raise TxDecodeError("bad segwit flag")
            segwit = True
            count = _read_varint(stream)
        inputs = []
        for _ in range(count):
            prev = _read(stream, 32)[::-1].hex()
            vout = int.from_bytes(_read(stream, 4), "little")
            script_sig = _read(stream, _read_varint(stream))
            sequence = int.from_bytes(_read(stream, 4), "little")
            inputs.append(TxIn(prev, vout, script_sig, sequence))
        outputs = []
        for _ in range(_read_varint(stream)):
            value = int.from_bytes(_read(stream, 8), "little")
            outputs.append(TxOut(value, _read(stream, _read_varint(stream))))
        if segwit:
            inputs = [
                replace(
                    txin,
                    witness=tuple(
                        _read(stream, _read_varint(stream)) for _ in range(_read_varint(stream))
                    ),
                )
                for txin in inputs
            ]
        locktime = int.from_bytes(_read(stream, 4), "little")
        if stream.read(1):
            raise TxDecodeError("trailing bytes after the transaction")
        return cls(version, tuple(inputs), tuple(outputs), locktime)

    def serialize(self, *, with_witness: bool = True) -> bytes:
        segwit = with_witness and any(txin.witness for txin in self.inputs)
        out = self.version.to_bytes(4, "little")
        if segwit:
            out += b"\x00\x01"
        out += compact_size(len(self.inputs))
        for txin in self.inputs:
            out += txin.outpoint_bytes() + _push(txin.script_sig)
            out += txin.sequence.to_bytes(4, "little")
        out += compact_size(len(self.outputs))
        for txout in self.outputs:
            out += txout.serialize()
        if segwit:
            for txin in self.inputs:
                out += compact_size(len(txin.witness)) + b"".join(_push(i) for i in txin.witness)
        return out + self.locktime.to_bytes(4, "little")

    def to_hex(self) -> str:
        return self.serialize().hex()

    @property
    def txid(self) -> str:
        digest = hashlib.sha256(hashlib.sha256(self.serialize(with_witness=False)).digest())
        return digest.digest()[::-1].hex()

    @property
    def vsize(self) -> int:
        base = len(self.serialize(with_witness=False))
        total = len(self.serialize())
        return (base * 3 + total + 3) // 4

    def with_witness(self, input_index: int, witness: tuple[bytes, ...]) -> Tx:
        inputs = list(self.inputs)
        inputs[input_index] = replace(inputs[input_index], witness=witness)
        return replace(self, inputs=tuple(inputs))


def tagged_hash(tag: str, data: bytes) -> bytes:
    tag_digest = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_digest + tag_digest + data).digest()


def tapleaf_hash(script: bytes, leaf_version: int = TAPSCRIPT_LEAF_VERSION) -> bytes:
    return tagged_hash("TapLeaf", bytes([leaf_version]) + _push(script))


def taproot_sighash(
    tx: Tx,
    input_index: int,
    prevout_scripts: list[bytes],
    prevout_values: list[int],
    *,
    leaf_script: bytes | None = None,
) -> bytes:
    """BIP-341 signature hash, SIGHASH_DEFAULT, no annex; script path when a leaf is given."""
    if len(prevout_scripts) != len(tx.inputs) or len(prevout_values) != len(tx.inputs):
        raise ValueError("one prevout script and value per input are needed")
    sha = hashlib.sha256
    msg = b"\x00" + b"\x00"  # epoch, hash_type SIGHASH_DEFAULT
    msg += tx.version.to_bytes(4, "little") + tx.locktime.to_bytes(4, "little")
    msg += sha(b"".join(i.outpoint_bytes() for i in tx.inputs)).digest()
    msg += sha(b"".join(v.to_bytes(8, "little") for v in prevout_values)).digest()
    msg += sha(b"".join(_push(s) for s in prevout_scripts)).digest()
    msg += sha(b"".join(i.sequence.to_bytes(4, "little") for i in tx.inputs)).digest()
    msg += sha(b"".join(o.serialize() for o in tx.outputs)).digest()
    msg += bytes([2 if leaf_script is not None else 0])
    msg += input_index.to_bytes(4, "little")
    if leaf_script is not None:
        msg += tapleaf_hash(leaf_script) + b"\x00" + b"\xff\xff\xff\xff"
    return tagged_hash("TapSighash", msg)
