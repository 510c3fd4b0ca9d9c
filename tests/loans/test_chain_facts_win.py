"""Chain facts win: what the contract and the Bitcoin chain say is applied whatever the
backend had concluded, and a loan the contract holds open never drops out of sight."""

from __future__ import annotations

from decimal import Decimal

import pytest

from btcloan.models import Alert
from chainwatch.events import ChainEvent
from chainwatch.models import EvmEvent, EvmTransaction
from loans.deadlines import Chain, Deadline, DeadlineKind, Party
from loans.handlers import LoanEventConsumer
from loans.models import (
    AuditEntry,
    BitcoinStage,
    LoanStatus,
    LoanWorkflow,
    WorkflowStatus,
    WorkflowType,
)
from loans.outputs import collateral_of
from loans.selectors import loans_watched
from loans.services.origination import OFFER_SENT, loan_offer_evaluate
from loans.services.settlement import loan_close_if_settled
from loans.services.watchdog import _margin_alert
from loans.services.workflows import workflow_fail, workflow_start
from vaultero import BIP341_NUMS, SEED_INTERNAL_KEY

pytestmark = pytest.mark.django_db

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def offer_sent(loan) -> EvmTransaction:
    return EvmTransaction.objects.create(
        chain_id=31337,
        loan_ref=str(loan.pk),
        action="offer",
        contract_name="BtcCollateralLoan",
        to_address=CONTRACT,
        function="extendLoanOffer",
        args=[int(loan.onchain_id)],
    )


def offered(loan, block: int = 300) -> ChainEvent:
    row = EvmEvent.objects.create(
        chain_id=31337,
        contract_address=CONTRACT,
        contract_name="BtcCollateralLoan",
        event_name="LoanOffered",
        block_number=block,
        block_hash="0x" + "22" * 32,
        transaction_hash="0x" + "33" * 32,
        log_index=0,
        args={"loanId": int(loan.onchain_id), "lender": "0x01", "amount": 1, "bondAmount": 7},
        loan_id=loan.onchain_id,
        delivery_key=f"loan:{loan.onchain_id}",
    )
    return ChainEvent.of(row)


def test_no_offer_evaluation_runs_once_the_offer_was_sent(make_loan):
    # Finding 1: TX_1 built, deposit confirmed; an evaluation now would read the Bitcoin head,
    # and one block too many makes the window "too short", a final INVALID.
    loan = make_loan(collateral_lock_feerate=2, bitcoin_stage=BitcoinStage.PRESIGNED)
    offer_sent(loan)
    assert loan_offer_evaluate(loan_id=loan.pk) == [OFFER_SENT]  # no node was asked
    loan.refresh_from_db()
    assert loan.status == LoanStatus.REQUESTED
    assert not AuditEntry.objects.filter(loan=loan, to_value=LoanStatus.INVALID).exists()


def test_a_confirmed_offer_takes_an_invalid_loan_up_again_with_an_alert(make_loan):
    loan = make_loan(status=LoanStatus.INVALID, invalid_reason="escrow CSV window too short")
    workflow = workflow_start(loan_id=loan.pk, type=WorkflowType.ESCROW_SETUP, step="offer")
    workflow_fail(workflow_id=workflow.pk, step="offer", error="window too short")
    LoanEventConsumer().handle_event(offered(loan))
    loan.refresh_from_db()
    assert loan.status == LoanStatus.OFFERED
    assert (loan.offer_block, loan.bond_wei, loan.invalid_reason) == (300, Decimal(7), "")
    alert = Alert.objects.get(key=f"loan:{loan.pk}:taken_up")
    assert alert.severity == "critical"
    assert AuditEntry.objects.filter(loan=loan, action="taken_up_again").exists()
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.COMPLETED  # the chain proved the offer went out
    assert LoanWorkflow.objects.get(loan=loan, type=WorkflowType.COLLATERAL_SETUP)


def test_an_invalid_loan_with_an_offer_out_stays_watched(make_loan):
    refused = make_loan(status=LoanStatus.INVALID)
    raced = make_loan(status=LoanStatus.INVALID)
    live = make_loan()
    closed = make_loan(status=LoanStatus.CLOSED)
    offer_sent(raced)
    offer_sent(closed)
    assert list(loans_watched()) == [raced, live]
    assert refused not in loans_watched()


def test_closing_a_loan_ends_its_workflows(make_loan):
    loan = make_loan(status=LoanStatus.REFUNDED_TO_LENDER, bitcoin_stage=BitcoinStage.EXITED)
    workflow_start(loan_id=loan.pk, type=WorkflowType.COLLATERAL_SETUP, step="await_acceptance")
    assert loan_close_if_settled(loan_id=loan.pk)
    assert set(LoanWorkflow.objects.filter(loan=loan).values_list("status", flat=True)) == {
        WorkflowStatus.COMPLETED
    }


@pytest.mark.parametrize(
    ("status", "alerted"),
    [
        (LoanStatus.REFUNDED_TO_LENDER, False),  # a withdrawn offer: TX_1 is never sent
        (LoanStatus.REQUESTED, False),
        (LoanStatus.REPAID, False),
        (LoanStatus.OFFERED, True),
        (LoanStatus.ACTIVE, True),
    ],
)
def test_the_tx1_margin_alert_only_while_tx1_is_owed(make_loan, settings, status, alerted):
    settings.LOAN_ALERT_TX1_MARGIN_BLOCKS = 10
    loan = make_loan(status=status, bitcoin_stage=BitcoinStage.PRESIGNED)
    deadline = Deadline(
        DeadlineKind.ESCROW_EXIT, Chain.BITCOIN, 500, 2, Party.LENDER, "get TX_1 confirmed", 501, 3
    )
    assert _margin_alert(loan, deadline, {}) == int(alerted)
    assert Alert.objects.filter(loan_ref=str(loan.pk)).exists() == alerted


def test_the_collateral_is_under_nums_even_for_a_seed_key_escrow(make_loan):
    loan = make_loan(escrow_internal_key=SEED_INTERNAL_KEY, preimage_hash_lender="b" * 64)
    assert collateral_of(loan).internal_key == BIP341_NUMS
