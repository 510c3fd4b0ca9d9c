"""What a spend's witness tells: which leaf of our two-leaf tree it used, and the preimage it
revealed. `vaultero.inspect_spend` does the work; this adapts its answer to plain values.

Leaf names by output: escrow leaf0 = borrower exit, leaf1 = collateral lock (TX_1);
collateral leaf0 = lender sweep, leaf1 = release to the borrower."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import vaultero
from bitcoin.txcodec import Tx, TxDecodeError

logger = logging.getLogger(__name__)

OP_SHA256 = 0xA8
OP_CHECKSEQUENCEVERIFY = 0xB2


def describe_spend(raw_hex: str, input_index: int) -> tuple[int | None, str]:
    """(leaf index or None for a key-path/foreign spend, revealed preimage hex or "")."""
    try:
        leaf_index, preimage = _adapt(vaultero.inspect_spend(raw_hex, input_index))
    except vaultero.VaulteroError as exc:  # a foreign spend of a watched outpoint is a fact too
        logger.warning("inspect_spend: %s:%s: %s", raw_hex[:16], input_index, exc)
        leaf_index, preimage = None, ""
    if leaf_index is None:
        # Not one of our exact leaves (e.g. another leaf encoding): read the protocol's shape.
        return _from_witness(raw_hex, input_index)
    return leaf_index, preimage


def _adapt(info: Any) -> tuple[int | None, str]:
    """vaultero's SpendInfo: `timelocked` marks leaf0 (exit/sweep), a named hash-lock leaf is
    leaf1; `preimage` is set only when it hashes to the leaf's committed hash."""
    if info is None:
        return None, ""
    if getattr(info, "timelocked", False):
        index: int | None = 0
    elif getattr(info, "leaf", None) in ("collateral_lock", "collateral_release"):
        index = 1
    else:
        index = None
    preimage = getattr(info, "preimage", None)
    return index, preimage.hex() if isinstance(preimage, bytes) else ""


def _from_witness(raw_hex: str, input_index: int) -> tuple[int | None, str]:
    """The protocol's leaves read directly: leaf0 is the CSV leaf, leaf1 the hash-lock leaf;
    the preimage is the 32-byte witness item whose sha256 the leaf commits to."""
    try:
        witness = Tx.from_hex(raw_hex).inputs[input_index].witness
    except (TxDecodeError, IndexError):
        return None, ""
    if len(witness) < 2 or not witness[-1] or witness[-1][0] & 0xFE != 0xC0:
        return None, ""  # key path (or not taproot)
    leaf = witness[-2]
    if len(leaf) > 2 and leaf[0] == OP_SHA256:
        index: int | None = 1
    elif OP_CHECKSEQUENCEVERIFY in leaf[:5]:
        index = 0
    else:
        index = None
    for item in witness[:-2]:
        if len(item) == 32 and hashlib.sha256(item).digest() in leaf:
            return index, item.hex()
    return index, ""


SPEND_PATHS = {
    ("escrow", 0): "borrower_exit",
    ("escrow", 1): "collateral_lock",
    ("collateral", 0): "lender_sweep",
    ("collateral", 1): "collateral_release",
}


def spend_path(purpose: str, leaf_index: int | None) -> str | None:
    """The protocol's name for a spend of a watched output through a leaf."""
    return None if leaf_index is None else SPEND_PATHS.get((purpose, leaf_index))
