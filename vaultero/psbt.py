"""A BIP-174 PSBT (version 0) codec with the BIP-371 taproot fields, and the mapping between a
PSBT and a SpendTemplate. Fields we do not interpret are kept, byte for byte."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from vaultero.errors import InvalidSignatureError, PsbtError, TransactionDecodeError
from vaultero.scripts import LeafName, output_from_leaves, parse_leaf
from vaultero.signing import schnorr_verify
from vaultero.taproot import LEAF_VERSION_TAPSCRIPT, TaprootOutput, parse_xonly_key
from vaultero.transactions import Outpoint, SpendTemplate
from vaultero.txcodec import Transaction, TxOut, compact_size, decode_transaction

MAGIC: Final[bytes] = b"psbt\xff"
GLOBAL_UNSIGNED_TX: Final[int] = 0x00
IN_NON_WITNESS_UTXO, IN_WITNESS_UTXO, IN_FINAL_SCRIPTWITNESS = 0x00, 0x01, 0x08
IN_TAP_KEY_SIG, IN_TAP_SCRIPT_SIG, IN_TAP_LEAF_SCRIPT = 0x13, 0x14, 0x15
IN_TAP_BIP32_DERIVATION, IN_TAP_INTERNAL_KEY, IN_TAP_MERKLE_ROOT = 0x16, 0x17, 0x18
OUT_TAP_INTERNAL_KEY, OUT_TAP_TREE, OUT_TAP_BIP32_DERIVATION = 0x05, 0x06, 0x07

Pairs = tuple[tuple[bytes, bytes], ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PsbtError("PSBT ends too early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def compact(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        return int.from_bytes(self.take({0xFD: 2, 0xFE: 4, 0xFF: 8}[first]), "little")

    def var_bytes(self) -> bytes:
        return self.take(self.compact())

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def _read_map(r: _Reader) -> Pairs:
    pairs: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    while True:
        key = r.var_bytes()
        if not key:
            return tuple(pairs)
        if key in seen:
            raise PsbtError(f"PSBT has a duplicate key {key.hex()}")
        seen.add(key)
        pairs.append((key, r.var_bytes()))


def _write_map(pairs: Pairs) -> bytes:
    out = b""
    for key, value in sorted(pairs):
        out += compact_size(len(key)) + key + compact_size(len(value)) + value
    return out + b"\x00"


def _parse_txout(value: bytes, name: str) -> TxOut:
    r = _Reader(value)
    try:
        amount = int.from_bytes(r.take(8), "little")
        script = r.var_bytes()
    except PsbtError:
        raise PsbtError(f"{name} is not a serialized output") from None
    if not r.done:
        raise PsbtError(f"{name} is not a serialized output")
    return TxOut(amount, script)


def _check_derivation(value: bytes, name: str) -> None:
    r = _Reader(value)
    try:
        r.take(32 * r.compact())
    except PsbtError:
        raise PsbtError(f"{name} value is malformed") from None
    rest = len(value) - r.pos
    if rest < 4 or rest % 4:
        raise PsbtError(f"{name} value is malformed")


def _check_key_len(key: bytes, length: int, name: str) -> None:
    if len(key) != length:
        raise PsbtError(f"{name} key must be {length} bytes, got {len(key)}")


def _check_witness_utxo(key: bytes, value: bytes) -> None:
    _check_key_len(key, 1, "PSBT_IN_WITNESS_UTXO")
    _parse_txout(value, "PSBT_IN_WITNESS_UTXO")


def _signature_check(name: str, key_len: int) -> Callable[[bytes, bytes], None]:
    def check(key: bytes, value: bytes) -> None:
        _check_key_len(key, key_len, name)
        if len(value) not in (64, 65):
            raise PsbtError(f"{name} signature must be 64 or 65 bytes, got {len(value)}")

    return check


def _check_leaf_script(key: bytes, value: bytes) -> None:
    size = len(key) - 1
    if size < 33 or (size - 33) % 32 or size > 33 + 32 * 128:
        raise PsbtError(f"PSBT_IN_TAP_LEAF_SCRIPT control block has a bad length {size}")
    if not value:
        raise PsbtError("PSBT_IN_TAP_LEAF_SCRIPT value is empty")


def _derivation_check(name: str) -> Callable[[bytes, bytes], None]:
    def check(key: bytes, value: bytes) -> None:
        _check_key_len(key, 33, name)
        _check_derivation(value, name)

    return check


def _hash32_check(name: str) -> Callable[[bytes, bytes], None]:
    def check(key: bytes, value: bytes) -> None:
        _check_key_len(key, 1, name)
        if len(value) != 32:
            raise PsbtError(f"{name} value must be 32 bytes, got {len(value)}")

    return check


# How each input field we understand is checked; unknown fields are kept unchecked.
_INPUT_CHECKS: Final[Mapping[int, Callable[[bytes, bytes], None]]] = {
    IN_WITNESS_UTXO: _check_witness_utxo,
    IN_TAP_KEY_SIG: _signature_check("PSBT_IN_TAP_KEY_SIG", 1),
    IN_TAP_SCRIPT_SIG: _signature_check("PSBT_IN_TAP_SCRIPT_SIG", 65),
    IN_TAP_LEAF_SCRIPT: _check_leaf_script,
    IN_TAP_BIP32_DERIVATION: _derivation_check("PSBT_IN_TAP_BIP32_DERIVATION"),
    IN_TAP_INTERNAL_KEY: _hash32_check("PSBT_IN_TAP_INTERNAL_KEY"),
    IN_TAP_MERKLE_ROOT: _hash32_check("PSBT_IN_TAP_MERKLE_ROOT"),
}


def _check_input_pair(key: bytes, value: bytes) -> None:
    check = _INPUT_CHECKS.get(key[0])
    if check is not None:
        check(key, value)


def parse_tap_tree(value: bytes) -> tuple[tuple[int, int, bytes], ...]:
    """PSBT_OUT_TAP_TREE: (depth, leaf version, script) tuples in depth-first order."""
    r = _Reader(value)
    leaves: list[tuple[int, int, bytes]] = []
    try:
        while not r.done:
            depth, version = r.take(1)[0], r.take(1)[0]
            leaves.append((depth, version, r.var_bytes()))
    except PsbtError:
        raise PsbtError("PSBT_OUT_TAP_TREE value is malformed") from None
    if not leaves or any(d > 128 for d, _, _ in leaves):
        raise PsbtError("PSBT_OUT_TAP_TREE value is malformed")
    return tuple(leaves)


def _check_output_pair(key: bytes, value: bytes) -> None:
    kind = key[0]
    if kind == OUT_TAP_INTERNAL_KEY:
        _check_key_len(key, 1, "PSBT_OUT_TAP_INTERNAL_KEY")
        if len(value) != 32:
            raise PsbtError(f"PSBT_OUT_TAP_INTERNAL_KEY value must be 32 bytes, got {len(value)}")
    elif kind == OUT_TAP_TREE:
        _check_key_len(key, 1, "PSBT_OUT_TAP_TREE")
        parse_tap_tree(value)
    elif kind == OUT_TAP_BIP32_DERIVATION:
        _check_key_len(key, 33, "PSBT_OUT_TAP_BIP32_DERIVATION")
        _check_derivation(value, "PSBT_OUT_TAP_BIP32_DERIVATION")


def _first(pairs: Pairs, kind: int) -> bytes | None:
    return next((v for k, v in pairs if k == bytes([kind])), None)


def _unsigned_tx(global_pairs: Pairs) -> bytes:
    tx_bytes = _first(global_pairs, GLOBAL_UNSIGNED_TX)
    if tx_bytes is None:
        raise PsbtError("PSBT has no unsigned transaction")
    if any(key[0] == GLOBAL_UNSIGNED_TX and len(key) != 1 for key, _ in global_pairs):
        raise PsbtError("PSBT_GLOBAL_UNSIGNED_TX key must be 1 byte")
    return tx_bytes


def _decode_unsigned(tx_bytes: bytes) -> Transaction:
    try:
        tx = decode_transaction(tx_bytes)
    except TransactionDecodeError as exc:
        raise PsbtError(f"PSBT unsigned transaction is invalid: {exc}") from None
    if any(i.script_sig or i.witness for i in tx.inputs):
        raise PsbtError("PSBT unsigned transaction has signatures")
    return tx


@dataclass(frozen=True)
class Psbt:
    """A parsed PSBT: the unsigned transaction and the raw key-value maps, all validated."""

    unsigned_tx: bytes
    global_pairs: Pairs
    input_pairs: tuple[Pairs, ...]
    output_pairs: tuple[Pairs, ...]

    @classmethod
    def parse(cls, data: bytes) -> Psbt:
        if not data.startswith(MAGIC):
            raise PsbtError("not a PSBT: missing magic bytes")
        r = _Reader(data[len(MAGIC) :])
        global_pairs = _read_map(r)
        tx_bytes = _unsigned_tx(global_pairs)
        tx = _decode_unsigned(tx_bytes)
        inputs = tuple(_read_map(r) for _ in tx.inputs)
        outputs = tuple(_read_map(r) for _ in tx.outputs)
        if not r.done:
            raise PsbtError("PSBT has trailing bytes")
        for key, value in (pair for pairs in inputs for pair in pairs):
            _check_input_pair(key, value)
        for key, value in (pair for pairs in outputs for pair in pairs):
            _check_output_pair(key, value)
        rest = tuple(p for p in global_pairs if p[0] != bytes([GLOBAL_UNSIGNED_TX]))
        return cls(tx_bytes, rest, inputs, outputs)

    def serialize(self) -> bytes:
        out = MAGIC + _write_map(
            ((bytes([GLOBAL_UNSIGNED_TX]), self.unsigned_tx), *self.global_pairs)
        )
        for pairs in (*self.input_pairs, *self.output_pairs):
            out += _write_map(pairs)
        return out

    def to_base64(self) -> str:
        return base64.b64encode(self.serialize()).decode()

    @classmethod
    def from_base64(cls, text: str) -> Psbt:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PsbtError("PSBT is not valid base64") from None
        return cls.parse(raw)


# --- SpendTemplate <-> PSBT ---------------------------------------------------------------
def to_psbt(tx: SpendTemplate, *, signatures: Mapping[str, bytes] | None = None) -> str:
    """A base64 PSBT for `tx`: witness UTXO, internal key, both leaves with their control
    blocks, the merkle root, any `signatures` (x-only key hex → 64-byte signature, each
    verified), and for an output that is a collateral output its internal key and tree."""
    out = tx.output
    pairs: list[tuple[bytes, bytes]] = [
        (
            bytes([IN_WITNESS_UTXO]),
            tx.value.to_bytes(8, "little")
            + compact_size(len(out.script_pubkey))
            + out.script_pubkey,
        ),
        (bytes([IN_TAP_INTERNAL_KEY]), bytes.fromhex(out.internal_key)),
        (bytes([IN_TAP_MERKLE_ROOT]), out.merkle_root),
    ]
    for index, script in enumerate(out.leaves):
        pairs.append(
            (
                bytes([IN_TAP_LEAF_SCRIPT]) + out.control_block(index),
                script + bytes([LEAF_VERSION_TAPSCRIPT]),
            )
        )
    for key_hex, sig in (signatures or {}).items():
        key = parse_xonly_key(key_hex, name="signature key")
        if not schnorr_verify(tx.sighash, key, sig):
            raise InvalidSignatureError(
                f"signature by {key.hex()} does not verify for this {tx.leaf}"
            )
        pairs.append((bytes([IN_TAP_SCRIPT_SIG]) + key + tx.output.leaf_hash(tx.leaf_index), sig))
    outputs: list[Pairs] = []
    for txout in tx.outputs:
        outputs.append(_collateral_output_pairs(tx, txout))
    psbt = Psbt(tx.unsigned_tx, (), (tuple(pairs),), tuple(outputs))
    return psbt.to_base64()


def _collateral_output_pairs(tx: SpendTemplate, txout: TxOut) -> Pairs:
    """TX_1's collateral output, described (internal key, tree) so a wallet can check it."""
    collateral = tx.collateral
    if collateral is None or txout.script_pubkey != collateral.script_pubkey:
        return ()
    tree = b"".join(
        bytes([1, LEAF_VERSION_TAPSCRIPT]) + compact_size(len(leaf)) + leaf
        for leaf in collateral.leaves
    )
    return (
        (bytes([OUT_TAP_INTERNAL_KEY]), bytes.fromhex(collateral.internal_key)),
        (bytes([OUT_TAP_TREE]), tree),
    )


def _collateral_from_pairs(pairs: Pairs, txout: TxOut) -> TaprootOutput | None:
    internal = _first(pairs, OUT_TAP_INTERNAL_KEY)
    tree = _first(pairs, OUT_TAP_TREE)
    if internal is None or tree is None:
        return None
    leaves = parse_tap_tree(tree)
    if len(leaves) != 2 or any(d != 1 or v != LEAF_VERSION_TAPSCRIPT for d, v, _ in leaves):
        raise PsbtError("PSBT collateral output tree is not a two-leaf tapscript tree")
    collateral = output_from_leaves(internal, (leaves[0][2], leaves[1][2]))
    if collateral is None or collateral.kind != "collateral":
        raise PsbtError("PSBT collateral output tree is not a vaultero collateral tree")
    if collateral.script_pubkey != txout.script_pubkey:
        raise PsbtError("PSBT collateral output tree does not make the output's address")
    return collateral


@dataclass(frozen=True)
class PsbtSpend:
    """What `from_psbt` recovers: the template (rebuilt and checked against the PSBT) and the
    verified script-path signatures for the spent leaf, by x-only key hex."""

    template: SpendTemplate
    signatures: Mapping[str, bytes]
    psbt: Psbt


def _spent_output(pairs: Pairs) -> tuple[TaprootOutput, TxOut]:
    """The output the input spends, rebuilt from its two leaves and internal key, and the
    witness UTXO it must match."""
    utxo_raw = _first(pairs, IN_WITNESS_UTXO)
    internal = _first(pairs, IN_TAP_INTERNAL_KEY)
    if utxo_raw is None or internal is None:
        raise PsbtError("PSBT input lacks the witness UTXO or the taproot internal key")
    utxo = _parse_txout(utxo_raw, "PSBT_IN_WITNESS_UTXO")
    scripts = [v[:-1] for k, v in pairs if k[0] == IN_TAP_LEAF_SCRIPT and v[-1] == 0xC0]
    hashlocked = [s for s in scripts if (p := parse_leaf(s)) is not None and p.leaf_index == 1]
    timelocked = [s for s in scripts if (p := parse_leaf(s)) is not None and p.leaf_index == 0]
    if len(scripts) != 2 or len(hashlocked) != 1 or len(timelocked) != 1:
        raise PsbtError("PSBT input does not carry both leaves of a vaultero output")
    output = output_from_leaves(internal, (timelocked[0], hashlocked[0]))
    if output is None or output.script_pubkey != utxo.script_pubkey:
        raise PsbtError("PSBT leaves and internal key do not make the spent output's address")
    return output, utxo


def _spent_leaf(output: TaprootOutput, sequence: int) -> LeafName:
    """The timelocked leaf when nSequence is the output's CSV, else the hash-lock leaf."""
    if sequence == output.csv_blocks:
        return "escrow_exit" if output.kind == "escrow" else "lender_sweep"
    return "collateral_lock" if output.kind == "escrow" else "collateral_release"


def _signatures(template: SpendTemplate, pairs: Pairs) -> dict[str, bytes]:
    """The tap script signatures of the spent leaf, each verified."""
    signatures: dict[str, bytes] = {}
    spent_leaf_hash = template.output.leaf_hash(template.leaf_index)
    for key, value in pairs:
        if key[0] != IN_TAP_SCRIPT_SIG or key[33:] != spent_leaf_hash:
            continue
        if len(value) != 64:
            raise PsbtError("PSBT signature is not SIGHASH_DEFAULT (64 bytes)")
        if not schnorr_verify(template.sighash, key[1:33], value):
            raise InvalidSignatureError(f"PSBT signature by {key[1:33].hex()} does not verify")
        signatures[key[1:33].hex()] = value
    return signatures


def from_psbt(text: str) -> PsbtSpend:
    """Parse a base64 PSBT of one of our spends and rebuild its SpendTemplate.

    The spent output is rebuilt from the PSBT's two leaf scripts and internal key and must
    match the witness UTXO; the leaf is the timelocked one when nSequence equals its CSV."""
    psbt = Psbt.from_base64(text)
    tx = decode_transaction(psbt.unsigned_tx)
    if len(tx.inputs) != 1 or tx.version != 2 or tx.locktime != 0:
        raise PsbtError("PSBT is not a vaultero spend: expected version 2, locktime 0, one input")
    pairs = psbt.input_pairs[0]
    output, utxo = _spent_output(pairs)
    txin = tx.inputs[0]
    leaf = _spent_leaf(output, txin.sequence)
    collateral = None
    if leaf == "collateral_lock" and len(tx.outputs) == 2:
        collateral = _collateral_from_pairs(psbt.output_pairs[1], tx.outputs[1])
    outpoint = Outpoint(txin.prev_txid, txin.prev_vout)
    template = SpendTemplate(
        leaf, output, outpoint, utxo.value, txin.sequence, tx.outputs, collateral
    )
    if template.unsigned_tx != psbt.unsigned_tx:
        raise PsbtError("PSBT transaction does not re-serialize identically")
    return PsbtSpend(template, _signatures(template, pairs), psbt)
