"""Shared keys, secrets and outputs, and Bitcoin Core's own script interpreter as the judge."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pbk
import pytest
from pbk.script import PrecomputedTransactionData

from vaultero import (
    Outpoint,
    SpendTemplate,
    TaprootOutput,
    collateral_output,
    escrow_output,
    xonly_public_key,
)

BORROWER_SECRET = "1f" * 32
LENDER_SECRET = "2e" * 32
STRANGER_SECRET = "3d" * 32


def consensus_accepts(template: SpendTemplate, signed_hex: str) -> bool:
    """Bitcoin Core's script verification (libbitcoinkernel) with every flag, taproot included.

    True when the input is valid; False on a script failure."""
    tx = pbk.Transaction(bytes.fromhex(signed_hex))
    spent = pbk.TransactionOutput(pbk.ScriptPubkey(template.spent_script_pubkey), template.value)
    precomputed = PrecomputedTransactionData(tx, [spent])
    return bool(
        pbk.ScriptPubkey(template.spent_script_pubkey).verify(
            template.value, tx, precomputed, 0, pbk.ScriptVerificationFlags.ALL
        )
    )


@dataclass(frozen=True)
class Loan:
    borrower_secret: str
    lender_secret: str
    borrower_key: str
    lender_key: str
    preimage_borrower: bytes
    preimage_lender: bytes
    escrow: TaprootOutput
    collateral: TaprootOutput
    outpoint: Outpoint


@pytest.fixture(scope="session")
def loan() -> Loan:
    borrower_key = xonly_public_key(BORROWER_SECRET)
    lender_key = xonly_public_key(LENDER_SECRET)
    p_b = hashlib.sha256(b"borrower preimage").digest()
    p_l = hashlib.sha256(b"lender preimage").digest()
    terms = {"borrower_key": borrower_key, "lender_key": lender_key}
    return Loan(
        BORROWER_SECRET,
        LENDER_SECRET,
        borrower_key,
        lender_key,
        p_b,
        p_l,
        escrow_output(**terms, preimage_hash=hashlib.sha256(p_b).hexdigest(), csv_blocks=100),
        collateral_output(**terms, preimage_hash=hashlib.sha256(p_l).hexdigest(), csv_blocks=27150),
        Outpoint("c0ffee" + "00" * 29, 1),
    )
