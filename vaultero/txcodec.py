"""A strict parser for serialized transactions (with or without witnesses)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vaultero.errors import TransactionDecodeError


@dataclass(frozen=True)
class DecodedInput:
    txid: str
    vout: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...]


@dataclass(frozen=True)
class DecodedOutput:
    value: int
    script_pubkey: bytes


@dataclass(frozen=True)
class DecodedTransaction:
    version: int
    inputs: tuple[DecodedInput, ...]
    outputs: tuple[DecodedOutput, ...]
    locktime: int
    txid: str


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
        return self.uint({0xFD: 2, 0xFE: 4, 0xFF: 8}[first])

    def var_bytes(self) -> bytes:
        return self.take(self.compact())


def _body(inputs: list[tuple[str, int, bytes, int]], outputs: list[DecodedOutput]) -> bytes:
    def compact(n: int) -> bytes:
        if n < 0xFD:
            return bytes([n])
        return (
            b"\xfd" + n.to_bytes(2, "little") if n <= 0xFFFF else b"\xfe" + n.to_bytes(4, "little")
        )

    out = compact(len(inputs))
    for txid, vout, script_sig, sequence in inputs:
        out += bytes.fromhex(txid)[::-1] + vout.to_bytes(4, "little")
        out += compact(len(script_sig)) + script_sig + sequence.to_bytes(4, "little")
    out += compact(len(outputs))
    for o in outputs:
        out += o.value.to_bytes(8, "little") + compact(len(o.script_pubkey)) + o.script_pubkey
    return out


def decode_transaction(raw: bytes) -> DecodedTransaction:
    r = _Reader(raw)
    version = r.uint(4)
    segwit = raw[4:6] == b"\x00\x01"
    if segwit:
        r.take(2)
    n_in = r.compact()
    if n_in == 0:
        raise TransactionDecodeError("transaction has no inputs")
    ins: list[tuple[str, int, bytes, int]] = []
    for _ in range(n_in):
        txid = r.take(32)[::-1].hex()
        vout = r.uint(4)
        script_sig = r.var_bytes()
        ins.append((txid, vout, script_sig, r.uint(4)))
    outs = [DecodedOutput(r.uint(8), r.var_bytes()) for _ in range(r.compact())]
    witnesses: list[tuple[bytes, ...]] = [() for _ in ins]
    if segwit:
        witnesses = [tuple(r.var_bytes() for _ in range(r.compact())) for _ in ins]
    locktime = r.uint(4)
    if r.pos != len(raw):
        raise TransactionDecodeError("transaction has trailing bytes")
    legacy = version.to_bytes(4, "little") + _body(ins, outs) + locktime.to_bytes(4, "little")
    txid = hashlib.sha256(hashlib.sha256(legacy).digest()).digest()[::-1].hex()
    inputs = tuple(
        DecodedInput(t, v, s, q, w) for (t, v, s, q), w in zip(ins, witnesses, strict=True)
    )
    return DecodedTransaction(version, inputs, tuple(outs), locktime, txid)
