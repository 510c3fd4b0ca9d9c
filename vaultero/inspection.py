"""Which leaf a confirmed spend used, and what it revealed (PROTOCOL.md duty 6)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vaultero.encoding import parse_hex
from vaultero.errors import VaulteroError
from vaultero.scripts import LeafName, parse_leaf
from vaultero.taproot import LEAF_VERSION_TAPSCRIPT, TaprootOutput
from vaultero.txcodec import decode_transaction


@dataclass(frozen=True)
class SpendInfo:
    """One input's script-path spend. `leaf` is None when the input is not one of our leaves,
    or when it is a timelocked leaf and `spent` was not given (escrow exit and lender sweep
    have the same shape; `timelocked` is then True). `preimage` is set only when it hashes to
    the leaf's committed hash."""

    txid: str
    input_index: int
    prev_txid: str
    prev_vout: int
    sequence: int
    leaf: LeafName | None = None
    timelocked: bool = False
    preimage: bytes | None = None
    preimage_hash: str | None = None
    signatures: tuple[bytes, ...] = ()
    leaf_script: bytes | None = None
    control_block: bytes | None = None

    @property
    def leaf_index(self) -> int | None:
        """0 for a timelocked leaf (exit, sweep), 1 for a hash-lock leaf (TX_1, release),
        None when the input did not spend one of our leaves."""
        if self.leaf_script is None:
            return None
        return 0 if self.timelocked else 1


def _raw(tx: object) -> bytes:
    if isinstance(tx, bytes | bytearray):
        return bytes(tx)
    if isinstance(tx, str):
        return parse_hex(tx, name="transaction")
    to_hex = getattr(tx, "to_hex", None)  # a bitcoin-utils Transaction
    if callable(to_hex):
        return parse_hex(str(to_hex()), name="transaction")
    raise VaulteroError("transaction must be hex, bytes or a bitcoin-utils Transaction")


def inspect_spend(tx: object, input_index: int, *, spent: TaprootOutput | None = None) -> SpendInfo:
    """Read input `input_index` of `tx` (hex, bytes or a bitcoin-utils Transaction).

    With `spent` (the output the input is known to spend) the leaf and control block must be
    exactly that output's, else `leaf` is None."""
    decoded = decode_transaction(_raw(tx))
    if not 0 <= input_index < len(decoded.inputs):
        raise VaulteroError(f"input_index {input_index} is out of range")
    txin = decoded.inputs[input_index]

    nothing = SpendInfo(decoded.txid, input_index, txin.prev_txid, txin.prev_vout, txin.sequence)
    witness = txin.witness
    if len(witness) < 3 or not witness[-1] or witness[-1][0] & 0xFE != LEAF_VERSION_TAPSCRIPT:
        return nothing
    script, control, args = witness[-2], witness[-1], witness[:-2]
    parsed = parse_leaf(script, escrow=None if spent is None else spent.kind == "escrow")
    if parsed is None or len(control) != 65:
        return nothing
    if spent is not None and (
        spent.leaves[parsed.leaf_index] != script
        or spent.control_block(parsed.leaf_index) != control
    ):
        return nothing
    timelocked = parsed.leaf_index == 0
    expected_items = {"collateral_lock": 3, "collateral_release": 2}.get(parsed.name, 1)
    if len(args) != expected_items:
        return nothing
    preimage = args[-1] if not timelocked else None
    if preimage is not None and hashlib.sha256(preimage).hexdigest() != parsed.preimage_hash:
        preimage = None
    signatures = args[:-1] if not timelocked else args
    return SpendInfo(
        decoded.txid,
        input_index,
        txin.prev_txid,
        txin.prev_vout,
        txin.sequence,
        leaf=None if timelocked and spent is None else parsed.name,
        timelocked=timelocked,
        preimage=preimage,
        preimage_hash=parsed.preimage_hash,
        signatures=tuple(signatures),
        leaf_script=script,
        control_block=control,
    )
