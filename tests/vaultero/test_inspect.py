"""inspect_spend: which leaf a spend used and the preimage it revealed."""

from __future__ import annotations

from bitcoinutils.transactions import Transaction

from tests.vaultero.conftest import Loan
from tests.vaultero.test_consensus import exit_tx, release_tx, sweep_tx, tx1
from vaultero import finalize, inspect_spend, sign_input


def test_collateral_lock_reveals_p_b(loan: Loan) -> None:
    t = tx1(loan)
    signed = finalize(
        t,
        borrower_sig=sign_input(t, loan.borrower_secret),
        lender_sig=sign_input(t, loan.lender_secret),
        preimage=loan.preimage_borrower,
    )
    info = inspect_spend(signed, 0)
    assert info.leaf == "collateral_lock"
    assert info.preimage == loan.preimage_borrower
    assert info.preimage_hash == loan.escrow.preimage_hash
    assert (info.prev_txid, info.prev_vout) == (loan.outpoint.txid, loan.outpoint.vout)
    assert info.txid == t.txid
    assert len(info.signatures) == 2
    # also from bytes and from a bitcoin-utils Transaction
    assert inspect_spend(bytes.fromhex(signed), 0) == info
    assert inspect_spend(Transaction.from_raw(signed), 0) == info


def test_release_reveals_p_l(loan: Loan) -> None:
    t = release_tx(loan)
    signed = finalize(
        t, borrower_sig=sign_input(t, loan.borrower_secret), preimage=loan.preimage_lender
    )
    info = inspect_spend(signed, 0)
    assert info.leaf == "collateral_release"
    assert info.preimage == loan.preimage_lender


def test_timelocked_spends_need_the_spent_output_to_be_named(loan: Loan) -> None:
    t = exit_tx(loan)
    signed_exit = finalize(t, borrower_sig=sign_input(t, loan.borrower_secret))
    s = sweep_tx(loan)
    signed_sweep = finalize(s, lender_sig=sign_input(s, loan.lender_secret))
    for signed in (signed_exit, signed_sweep):
        info = inspect_spend(signed, 0)
        assert info.leaf is None
        assert info.timelocked
        assert info.preimage is None
    empty_last_item = t.with_witness([b"\x01" * 64, t.leaf_script, b""])
    assert inspect_spend(empty_last_item, 0).leaf is None
    assert inspect_spend(signed_exit, 0, spent=loan.escrow).leaf == "escrow_exit"
    assert inspect_spend(signed_sweep, 0, spent=loan.collateral).leaf == "lender_sweep"
    # naming the wrong output is not believed
    assert inspect_spend(signed_sweep, 0, spent=loan.escrow).leaf is None


def test_unrelated_spends_are_not_ours(loan: Loan) -> None:
    t = exit_tx(loan)
    key_path_like = t.with_witness([b"\x01" * 64])
    info = inspect_spend(key_path_like, 0)
    assert info.leaf is None
    assert not info.timelocked
    assert info.preimage is None
