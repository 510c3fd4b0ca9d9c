"""The transaction codec: one strict parser and serializer for (segwit) transactions.

Everything in btcloan that reads or writes transaction bytes goes through here: vaultero's
spend templates and PSBTs, the backend's signer and outbox. Decoding is strict the way Bitcoin
Core's is (canonical compact sizes, no superfluous witness record, no trailing bytes), so what
decodes re-serializes to the same bytes and the txid is that of the bytes given.
(The devnode keeps its own codec on purpose: see bitcoin/devnode/codec.py.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Final

from vaultero.errors import TransactionDecodeError

# Final for BIP-68 (no relative lock), yet signals replaceability (BIP-125).
SEQUENCE_RBF: Final[int] = 0xFFFFFFFD
_COMPACT_WIDTH: Final[dict[int, int]] = {0xFD: 2, 0xFE: 4, 0xFF: 8}


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def var_bytes(data: bytes) -> bytes:
    """`data` prefixed with its length (a script, a witness item)."""
    return compact_size(len(data)) + data


def double_sha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


@dataclass(frozen=True)
class TxIn:
    """An input; `prev_txid` in display (RPC) byte order."""

    prev_txid: str
    prev_vout: int
    script_sig: bytes = b""
    sequence: int = SEQUENCE_RBF
    witness: tuple[bytes, ...] = ()

    def outpoint_bytes(self) -> bytes:
        return bytes.fromhex(self.prev_txid)[::-1] + self.prev_vout.to_bytes(4, "little")

    def serialize(self) -> bytes:
        return (
            self.outpoint_bytes() + var_bytes(self.script_sig) + self.sequence.to_bytes(4, "little")
        )


@dataclass(frozen=True)
class TxOut:
    """An output: `value` in satoshis and the exact script bytes."""

    value: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return self.value.to_bytes(8, "little") + var_bytes(self.script_pubkey)


@dataclass(frozen=True)
class Transaction:
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    @classmethod
    def from_hex(cls, raw_hex: str) -> Transaction:
        try:
            raw = bytes.fromhex(raw_hex)
        except ValueError:
            raise TransactionDecodeError("transaction hex is not hex") from None
        return decode_transaction(raw)

    @property
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.inputs)

    def serialize(self, *, with_witness: bool = True) -> bytes:
        """BIP-144 serialization; the legacy one when there is no witness (or not asked)."""
        segwit = with_witness and self.has_witness
        out = self.version.to_bytes(4, "little") + (b"\x00\x01" if segwit else b"")
        out += compact_size(len(self.inputs)) + b"".join(i.serialize() for i in self.inputs)
        out += compact_size(len(self.outputs)) + b"".join(o.serialize() for o in self.outputs)
        if segwit:
            for txin in self.inputs:
                out += compact_size(len(txin.witness))
                out += b"".join(var_bytes(item) for item in txin.witness)
        return out + self.locktime.to_bytes(4, "little")

    def to_hex(self) -> str:
        return self.serialize().hex()

    @property
    def txid(self) -> str:
        return double_sha256(self.serialize(with_witness=False))[::-1].hex()

    @property
    def vsize(self) -> int:
        """ceil(weight / 4), weight = 3 * base size + total size (BIP-141)."""
        weight = 3 * len(self.serialize(with_witness=False)) + len(self.serialize())
        return (weight + 3) // 4

    def with_witness(self, input_index: int, witness: tuple[bytes, ...]) -> Transaction:
        """A copy with `witness` as input `input_index`'s witness (unchecked)."""
        if not 0 <= input_index < len(self.inputs):
            raise TransactionDecodeError(f"input {input_index} does not exist")
        inputs = list(self.inputs)
        inputs[input_index] = replace(inputs[input_index], witness=tuple(witness))
        return replace(self, inputs=tuple(inputs))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TransactionDecodeError("transaction ends too early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def compact(self) -> int:
        first = self.uint(1)
        if first < 0xFD:
            return first
        value = self.uint(_COMPACT_WIDTH[first])
        if compact_size(value)[0] != first:
            raise TransactionDecodeError("non-canonical compact size")
        return value

    def var_bytes(self) -> bytes:
        return self.take(self.compact())


def _read_input(r: _Reader) -> TxIn:
    prev_txid = r.take(32)[::-1].hex()
    prev_vout = r.uint(4)
    script_sig = r.var_bytes()
    return TxIn(prev_txid, prev_vout, script_sig, r.uint(4))


def decode_transaction(raw: bytes) -> Transaction:
    """Parse exactly one transaction, nothing before or after it."""
    r = _Reader(raw)
    version = r.uint(4)
    segwit = raw[4:6] == b"\x00\x01"
    if segwit:
        r.take(2)
    inputs = [_read_input(r) for _ in range(r.compact())]
    if not inputs:
        raise TransactionDecodeError("transaction has no inputs")
    outputs = tuple(TxOut(r.uint(8), r.var_bytes()) for _ in range(r.compact()))
    if segwit:
        inputs = [
            replace(txin, witness=tuple(r.var_bytes() for _ in range(r.compact())))
            for txin in inputs
        ]
        if not any(txin.witness for txin in inputs):
            raise TransactionDecodeError("superfluous witness record")
    locktime = r.uint(4)
    if r.pos != len(raw):
        raise TransactionDecodeError("transaction has trailing bytes")
    return Transaction(version, tuple(inputs), outputs, locktime)
