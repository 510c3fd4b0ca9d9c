"""Deadlines on both chains follow the loan's state, in the right units, with who must act."""

from __future__ import annotations

import pytest

from loans.deadlines import Chain, DeadlineKind, Party, loan_deadlines, smallest_margin
from loans.models import BitcoinStage, ContractFlavour, LoanStatus

pytestmark = pytest.mark.django_db


def kinds(deadlines):
    return {d.kind: d for d in deadlines}


def test_an_offer_expires_t_b_after_the_offer_block(make_loan):
    loan = make_loan(status=LoanStatus.OFFERED, offer_block=500, timelock_borrower=1000)
    (deadline,) = loan_deadlines(loan, evm_head=1400, btc_head=None)
    assert deadline.kind == DeadlineKind.OFFER_EXPIRY
    assert deadline.chain == Chain.EVM
    assert deadline.block == 1500
    assert deadline.blocks_left == 99
    assert deadline.must_act == Party.BORROWER
    assert not deadline.passed
    # With the head at 1499 the next block (1500) is the borrower's last chance...
    assert loan_deadlines(loan, evm_head=1499, btc_head=None)[0].blocks_left == 0
    # ...and with the head at 1500 the lender's withdrawal can land in 1501.
    assert loan_deadlines(loan, evm_head=1500, btc_head=None)[0].passed


def test_an_active_loan_is_due_t_d_after_activation_and_the_escrow_exit_is_gone(make_loan):
    loan = make_loan(
        status=LoanStatus.ACTIVE,
        activation_block=1000,
        loan_duration=540000,
        bitcoin_stage=BitcoinStage.COLLATERAL_CONFIRMED,
        escrow_confirmed_height=100,
        collateral_confirmed_height=150,
        collateral_csv_blocks=27150,
    )
    found = kinds(loan_deadlines(loan, evm_head=2000, btc_head=160))
    assert set(found) == {DeadlineKind.REPAYMENT_DUE, DeadlineKind.COLLATERAL_SWEEP}
    assert found[DeadlineKind.REPAYMENT_DUE].block == 541000
    sweep = found[DeadlineKind.COLLATERAL_SWEEP]
    assert sweep.chain == Chain.BITCOIN
    # BIP-68: the sweep may be mined from block 27300 on, so 27299 is the last block before.
    assert sweep.block == 150 + 27150 - 1
    assert sweep.blocks_left == 27299 - 161
    assert sweep.must_act == Party.LENDER


def test_a_repayment_must_be_accepted_within_t_l_and_the_borrower_then_races_t1(make_loan):
    loan = make_loan(
        status=LoanStatus.REPAYMENT_IN_PROGRESS,
        repayment_block=9000,
        timelock_lender=1500,
        bitcoin_stage=BitcoinStage.COLLATERAL_CONFIRMED,
        collateral_confirmed_height=150,
        collateral_csv_blocks=10,
    )
    found = kinds(loan_deadlines(loan, evm_head=10000, btc_head=158))
    acceptance = found[DeadlineKind.REPAYMENT_ACCEPTANCE]
    assert acceptance.block == 10500
    assert acceptance.must_act == Party.LENDER
    # A repaying borrower must release before the lender's sweep path opens.
    assert found[DeadlineKind.COLLATERAL_SWEEP].must_act == Party.BORROWER
    # Sweep valid from block 160; tip 158: only block 159 is left for the release.
    assert found[DeadlineKind.COLLATERAL_SWEEP].blocks_left == 0
    tightest = smallest_margin(list(found.values()))
    assert tightest is not None
    assert tightest.kind == DeadlineKind.COLLATERAL_SWEEP


def test_tx1_must_confirm_before_the_escrow_exit_opens(make_loan):
    loan = make_loan(
        status=LoanStatus.ACTIVE,
        activation_block=10,
        bitcoin_stage=BitcoinStage.COLLATERAL_LOCKED,
        escrow_confirmed_height=100,
        escrow_csv_blocks=100,
    )
    exit_deadline = kinds(loan_deadlines(loan, evm_head=20, btc_head=198))[DeadlineKind.ESCROW_EXIT]
    # The exit is valid from block 200: TX_1 must be mined by block 199, the next block.
    assert exit_deadline.block == 199
    assert exit_deadline.blocks_left == 0
    assert exit_deadline.must_act == Party.LENDER


def test_a_closed_loan_has_no_deadline(make_loan):
    loan = make_loan(status=LoanStatus.CLOSED, bitcoin_stage=BitcoinStage.RELEASED)
    assert loan_deadlines(loan, evm_head=10**6, btc_head=10**5) == []
    assert smallest_margin([]) is None


# --- contract flavours: the seed's strict bounds, remedies after the deadline -------------


@pytest.mark.parametrize(
    ("flavour", "last"),
    [(ContractFlavour.BTCLOAN, 1500), (ContractFlavour.SEED, 1499)],
)
def test_the_offer_deadline_follows_the_flavour_and_the_withdrawal_opens_after_it(
    make_loan, flavour, last
):
    loan = make_loan(
        status=LoanStatus.OFFERED, offer_block=500, timelock_borrower=1000, contract_flavour=flavour
    )
    (deadline,) = loan_deadlines(loan, evm_head=1400, btc_head=None)
    # The borrower is told the last block the contract accepts: one less on the seed (<).
    assert deadline.block == last
    assert deadline.remedy_block == 1501
    # The withdrawal is due only once the next block is 1501, on both flavours.
    assert not loan_deadlines(loan, evm_head=1499, btc_head=None)[0].remedy_open
    assert loan_deadlines(loan, evm_head=1500, btc_head=None)[0].remedy_open
    on_last = loan_deadlines(loan, evm_head=last - 1, btc_head=None)[0]
    assert (on_last.blocks_left, on_last.passed) == (0, False)


@pytest.mark.parametrize(
    ("flavour", "last"),
    [(ContractFlavour.BTCLOAN, 1040), (ContractFlavour.SEED, 1039)],
)
def test_repayment_is_due_by_the_flavours_bound_and_default_opens_after_it(
    make_loan, flavour, last
):
    loan = make_loan(
        status=LoanStatus.ACTIVE, activation_block=1000, loan_duration=40, contract_flavour=flavour
    )
    (due,) = loan_deadlines(loan, evm_head=1010, btc_head=None)
    assert (due.kind, due.block, due.remedy_block) == (DeadlineKind.REPAYMENT_DUE, last, 1041)
    assert loan_deadlines(loan, evm_head=last, btc_head=None)[0].passed
    assert not loan_deadlines(loan, evm_head=1039, btc_head=None)[0].remedy_open
    assert loan_deadlines(loan, evm_head=1040, btc_head=None)[0].remedy_open


def test_bitcoin_remedies_open_the_block_after_the_last_one(make_loan):
    loan = make_loan(
        status=LoanStatus.DEFAULTED,
        contract_flavour=ContractFlavour.SEED,
        bitcoin_stage=BitcoinStage.COLLATERAL_CONFIRMED,
        collateral_confirmed_height=150,
        collateral_csv_blocks=10,
    )
    (sweep,) = loan_deadlines(loan, evm_head=10, btc_head=158)
    assert (sweep.block, sweep.remedy_block, sweep.remedy_open) == (159, 160, False)
    assert loan_deadlines(loan, evm_head=10, btc_head=159)[0].remedy_open
