"""What a spend's witness tells: which leaf of our two-leaf tree it used, and the preimage it
revealed. `vaultero.inspect_spend` reads the witness (the leaf must be one of ours byte for
byte); this adapts its answer to the values the scanner stores.

Leaf names by output: escrow leaf0 = borrower exit, leaf1 = collateral lock (TX_1);
collateral leaf0 = lender sweep, leaf1 = release to the borrower."""

from __future__ import annotations

import logging

import vaultero

logger = logging.getLogger(__name__)


def describe_spend(raw_hex: str, input_index: int) -> tuple[int | None, str]:
    """(leaf index, or None for a key-path or foreign spend; revealed preimage hex or "")."""
    try:
        info = vaultero.inspect_spend(raw_hex, input_index)
    except vaultero.VaulteroError as exc:  # a foreign spend of a watched outpoint is a fact too
        logger.warning("inspect_spend: %s:%s: %s", raw_hex[:16], input_index, exc)
        return None, ""
    return info.leaf_index, info.preimage.hex() if info.preimage is not None else ""


SPEND_PATHS = {
    ("escrow", 0): "borrower_exit",
    ("escrow", 1): "collateral_lock",
    ("collateral", 0): "lender_sweep",
    ("collateral", 1): "collateral_release",
}


def spend_path(purpose: str, leaf_index: int | None) -> str | None:
    """The protocol's name for a spend of a watched output through a leaf."""
    return None if leaf_index is None else SPEND_PATHS.get((purpose, leaf_index))
