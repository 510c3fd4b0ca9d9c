"""Every spend path against Bitcoin Core's consensus code (libbitcoinkernel script
verification, all flags), and every wrong variant rejected by it."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from bitcoinutils.transactions import Transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vaultero.conftest import STRANGER_SECRET, Loan, consensus_accepts
from vaultero import (
    SEED_INTERNAL_KEY,
    SEQUENCE_RBF,
    SpendTemplate,
    TxOut,
    build_borrower_exit,
    build_collateral_lock,
    build_collateral_release,
    build_lender_sweep,
    escrow_output,
    finalize,
    schnorr_sign,
    sign_input,
)

ESCROW_VALUE = 1_020_000
LOAN = 1_000_000
ORIGINATION = 10_000


def tx1(loan: Loan, feerate: int = 3) -> SpendTemplate:
    return build_collateral_lock(
        escrow=loan.escrow,
        outpoint=loan.outpoint,
        value=ESCROW_VALUE,
        collateral=loan.collateral,
        loan_sats=LOAN,
        origination_fee_sats=ORIGINATION,
        feerate_sat_vb=feerate,
        network="regtest",
    )


def exit_tx(loan: Loan) -> SpendTemplate:
    return build_borrower_exit(
        escrow=loan.escrow,
        outpoint=loan.outpoint,
        value=ESCROW_VALUE,
        feerate_sat_vb=2,
        network="regtest",
    )


def release_tx(loan: Loan) -> SpendTemplate:
    return build_collateral_release(
        collateral=loan.collateral,
        outpoint=loan.outpoint,
        value=LOAN,
        feerate_sat_vb=2,
        network="regtest",
    )


def sweep_tx(loan: Loan) -> SpendTemplate:
    return build_lender_sweep(
        collateral=loan.collateral,
        outpoint=loan.outpoint,
        value=LOAN,
        feerate_sat_vb=2,
        network="regtest",
    )


def actual_vsize(signed_hex: str) -> int:
    return int(Transaction.from_raw(signed_hex).get_vsize())


# --- the four paths are valid -------------------------------------------------------------
def test_collateral_lock_accepted(loan: Loan) -> None:
    t = tx1(loan)
    signed = finalize(
        t,
        borrower_sig=sign_input(t, loan.borrower_secret),
        lender_sig=sign_input(t, loan.lender_secret),
        preimage=loan.preimage_borrower,
    )
    assert consensus_accepts(t, signed)
    assert t.outputs[0] == TxOut(ORIGINATION, t.outputs[0].script_pubkey)
    assert t.outputs[1].script_pubkey == loan.collateral.script_pubkey
    assert actual_vsize(signed) == t.vsize
    assert t.fee == 3 * t.vsize
    # the remainder above collateral + fees stays in the collateral output
    assert t.outputs[1].value == ESCROW_VALUE - ORIGINATION - t.fee > LOAN
    assert t.sequence == SEQUENCE_RBF


def test_borrower_exit_accepted(loan: Loan) -> None:
    t = exit_tx(loan)
    signed = finalize(t, borrower_sig=sign_input(t, loan.borrower_secret))
    assert consensus_accepts(t, signed)
    assert t.sequence == loan.escrow.csv_blocks
    assert actual_vsize(signed) == t.vsize
    assert t.fee == 2 * t.vsize


def test_collateral_release_accepted(loan: Loan) -> None:
    t = release_tx(loan)
    signed = finalize(
        t, borrower_sig=sign_input(t, loan.borrower_secret), preimage=loan.preimage_lender
    )
    assert consensus_accepts(t, signed)
    assert actual_vsize(signed) == t.vsize
    assert t.fee == 2 * t.vsize


def test_lender_sweep_accepted(loan: Loan) -> None:
    t = sweep_tx(loan)
    signed = finalize(t, lender_sig=sign_input(t, loan.lender_secret))
    assert consensus_accepts(t, signed)
    assert t.sequence == loan.collateral.csv_blocks
    assert actual_vsize(signed) == t.vsize
    assert t.fee == 2 * t.vsize


def test_seed_internal_key_outputs_are_spendable(loan: Loan) -> None:
    seed_escrow = escrow_output(
        borrower_key=loan.borrower_key,
        lender_key=loan.lender_key,
        preimage_hash=loan.escrow.preimage_hash,
        csv_blocks=100,
        internal_key=SEED_INTERNAL_KEY,
    )
    assert seed_escrow.address("regtest") != loan.escrow.address("regtest")
    t = build_borrower_exit(
        escrow=seed_escrow,
        outpoint=loan.outpoint,
        value=50_000,
        feerate_sat_vb=1,
        network="regtest",
    )
    assert consensus_accepts(t, finalize(t, borrower_sig=sign_input(t, loan.borrower_secret)))


@settings(max_examples=12, deadline=None)
@given(
    feerate=st.integers(min_value=1, max_value=500),
    extra=st.integers(min_value=0, max_value=5_000_000),
    loan_sats=st.integers(min_value=500_000, max_value=10**9),
)
def test_collateral_lock_fee_is_feerate_times_real_vsize(
    loan: Loan, feerate: int, extra: int, loan_sats: int
) -> None:
    origination = loan_sats // 100
    value = loan_sats + origination + feerate * 250 + extra
    t = build_collateral_lock(
        escrow=loan.escrow,
        outpoint=loan.outpoint,
        value=value,
        collateral=loan.collateral,
        loan_sats=loan_sats,
        origination_fee_sats=origination,
        feerate_sat_vb=feerate,
        network="regtest",
    )
    signed = finalize(
        t,
        borrower_sig=sign_input(t, loan.borrower_secret),
        lender_sig=sign_input(t, loan.lender_secret),
        preimage=loan.preimage_borrower,
    )
    assert consensus_accepts(t, signed)
    assert t.fee == feerate * actual_vsize(signed)
    assert sum(o.value for o in t.outputs) + t.fee == value
    assert t.outputs[1].value >= loan_sats


# --- every wrong variant is rejected by consensus ------------------------------------------
def _tx1_parts(loan: Loan) -> tuple[SpendTemplate, bytes, bytes]:
    t = tx1(loan)
    return t, sign_input(t, loan.borrower_secret), sign_input(t, loan.lender_secret)


def test_collateral_lock_wrong_variants_rejected(loan: Loan) -> None:
    t, sig_b, sig_l = _tx1_parts(loan)
    leaf, cb = t.leaf_script, t.control_block
    stranger_sig = schnorr_sign(t.sighash, STRANGER_SECRET)
    variants = {
        "wrong preimage": [sig_b, sig_l, b"\x00" * 32, leaf, cb],
        "preimage of the wrong side (P_L)": [sig_b, sig_l, loan.preimage_lender, leaf, cb],
        "borrower signature missing": [sig_l, loan.preimage_borrower, leaf, cb],
        "lender signature missing": [sig_b, loan.preimage_borrower, leaf, cb],
        "signatures swapped": [sig_l, sig_b, loan.preimage_borrower, leaf, cb],
        "stranger signs for the borrower": [stranger_sig, sig_l, loan.preimage_borrower, leaf, cb],
        "stranger signs for the lender": [sig_b, stranger_sig, loan.preimage_borrower, leaf, cb],
        "lender signs twice": [sig_l, sig_l, loan.preimage_borrower, leaf, cb],
        "preimage first": [loan.preimage_borrower, sig_b, sig_l, leaf, cb],
        "control block before leaf": [sig_b, sig_l, loan.preimage_borrower, cb, leaf],
        "wrong leaf for this control block": [
            sig_b,
            sig_l,
            loan.preimage_borrower,
            t.output.leaves[0],
            cb,
        ],
    }
    for name, stack in variants.items():
        assert not consensus_accepts(t, t.with_witness(stack)), name
    good = [sig_b, sig_l, loan.preimage_borrower, leaf, cb]
    assert consensus_accepts(t, t.with_witness(good))


def test_tampered_output_after_signing_rejected(loan: Loan) -> None:
    t, sig_b, sig_l = _tx1_parts(loan)
    good = [sig_b, sig_l, loan.preimage_borrower, t.leaf_script, t.control_block]
    fee_out, collateral_out = t.outputs
    tampered = [
        # the lender moves 1,000 sats from the collateral to its own fee output
        replace(
            t,
            outputs=(
                replace(fee_out, value=fee_out.value + 1_000),
                replace(collateral_out, value=collateral_out.value - 1_000),
            ),
        ),
        replace(t, outputs=(fee_out, replace(collateral_out, value=collateral_out.value - 1))),
        replace(t, outputs=(TxOut(fee_out.value, b"\x51\x20" + b"\x11" * 32), collateral_out)),
    ]
    for changed in tampered:
        assert not consensus_accepts(changed, changed.with_witness(good))


def test_exit_and_sweep_before_the_csv_rejected(loan: Loan) -> None:
    for t, secret in ((exit_tx(loan), loan.borrower_secret), (sweep_tx(loan), loan.lender_secret)):
        early = replace(t, sequence=t.output.csv_blocks - 1)
        sig = sign_input(early, secret)
        stack = [sig, early.leaf_script, early.control_block]
        assert not consensus_accepts(early, early.with_witness(stack))
        # a final (non-relative) nSequence does not satisfy CSV either
        final = replace(t, sequence=0xFFFFFFFF)
        stack = [sign_input(final, secret), final.leaf_script, final.control_block]
        assert not consensus_accepts(final, final.with_witness(stack))
        on_time = [sign_input(t, secret), t.leaf_script, t.control_block]
        assert consensus_accepts(t, t.with_witness(on_time))


def test_exit_and_sweep_by_the_wrong_signer_rejected(loan: Loan) -> None:
    t = exit_tx(loan)
    lender_sig = schnorr_sign(t.sighash, loan.lender_secret)
    assert not consensus_accepts(t, t.with_witness([lender_sig, t.leaf_script, t.control_block]))
    s = sweep_tx(loan)
    borrower_sig = schnorr_sign(s.sighash, loan.borrower_secret)
    assert not consensus_accepts(s, s.with_witness([borrower_sig, s.leaf_script, s.control_block]))
    assert not consensus_accepts(s, s.with_witness([s.leaf_script, s.control_block]))


def test_release_wrong_variants_rejected(loan: Loan) -> None:
    t = release_tx(loan)
    sig_b = sign_input(t, loan.borrower_secret)
    leaf, cb = t.leaf_script, t.control_block
    variants = {
        "preimage of the wrong side (P_B)": [sig_b, loan.preimage_borrower, leaf, cb],
        "random preimage": [sig_b, hashlib.sha256(b"guess").digest(), leaf, cb],
        "lender signs": [
            schnorr_sign(t.sighash, loan.lender_secret),
            loan.preimage_lender,
            leaf,
            cb,
        ],
        "signature missing": [loan.preimage_lender, leaf, cb],
        "items out of order": [loan.preimage_lender, sig_b, leaf, cb],
        "signature for another transaction": [
            sign_input(exit_tx(loan), loan.borrower_secret),
            loan.preimage_lender,
            leaf,
            cb,
        ],
    }
    for name, stack in variants.items():
        assert not consensus_accepts(t, t.with_witness(stack)), name


def test_tx1_signature_commits_to_the_spent_amount(loan: Loan) -> None:
    t, sig_b, sig_l = _tx1_parts(loan)
    other = replace(t, value=t.value + 1)
    stack = [sig_b, sig_l, loan.preimage_borrower, t.leaf_script, t.control_block]
    assert not consensus_accepts(other, other.with_witness(stack))
