"""Facts into state: each EVM event and Bitcoin fact moves the loan as the protocol says,
records why, enqueues the lender's next step on commit, and changes nothing when replayed."""

from __future__ import annotations

import hashlib
import itertools
from decimal import Decimal
from typing import Any

import pytest

from bitcoin.facts import Fact, fact_of
from bitcoin.models import BitcoinFact
from chainwatch.events import ChainEvent
from chainwatch.models import EvmEvent
from loans.handlers import LoanEventConsumer, LoanNotYetKnown, on_bitcoin_fact
from loans.models import (
    AuditEntry,
    BitcoinStage,
    LoanRequestIntake,
    LoanStatus,
    LoanWorkflow,
    WorkflowType,
)

pytestmark = pytest.mark.django_db

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
_log = itertools.count()
_fact = itertools.count()
P_B = bytes(range(32))
H_B = hashlib.sha256(P_B).hexdigest()


def event(loan, name: str, block: int = 200, **args: Any) -> ChainEvent:
    onchain = int(loan.onchain_id) if loan is not None else args.pop("loanId")
    index = next(_log)
    row = EvmEvent.objects.create(
        chain_id=31337,
        contract_address=CONTRACT,
        contract_name="BtcCollateralLoan",
        event_name=name,
        block_number=block,
        block_hash="0x" + "11" * 32,
        transaction_hash=f"0x{index:064x}",
        log_index=index,
        args={"loanId": onchain, **args},
        loan_id=Decimal(onchain),
        delivery_key=f"loan:{onchain}",
    )
    return ChainEvent.of(row)


def fact(loan, kind: str, **payload: Any) -> Fact:
    row = BitcoinFact.objects.create(
        kind=kind, loan_ref=str(loan.pk), dedupe_key=f"test:{next(_fact)}", payload=payload
    )
    return fact_of(row)


@pytest.fixture
def loan(make_loan):
    return make_loan(contract_address=CONTRACT, preimage_hash_borrower=H_B)


@pytest.fixture
def consumer():
    return LoanEventConsumer()


@pytest.fixture
def sent(monkeypatch):
    """Celery `delay_on_commit` calls, recorded instead of sent to the broker."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    from celery.app.task import Task

    def record(self, *args, **kwargs):
        calls.append((self.name, args))

    monkeypatch.setattr(Task, "delay", record)
    return calls


def test_a_request_is_recorded_for_intake_once(consumer, django_capture_on_commit_callbacks, sent):
    args = {"borrower": "0x" + "ab" * 20, "amount": 10**16, "btcAddress": "bcrt1p" + "q" * 56}
    with django_capture_on_commit_callbacks(execute=True):
        consumer.handle_event(event(None, "LoanRequested", block=150, loanId=7, **args))
        consumer.handle_event(event(None, "LoanRequested", block=150, loanId=7, **args))
    intake = LoanRequestIntake.objects.get()
    assert (int(intake.onchain_id), intake.request_block, intake.amount_wei) == (7, 150, 10**16)
    assert sent == [("loans.intake_loan_request", (intake.pk,))]


def test_an_event_of_a_loan_not_yet_created_is_retried_later(consumer):
    orphan = event(None, "LoanOffered", loanId=999, lender="0x" + "cd" * 20, amount=1, bondAmount=1)
    with pytest.raises(LoanNotYetKnown):
        consumer.handle_event(orphan)


def test_an_offer_records_its_block_and_bond(consumer, loan):
    consumer.handle_event(
        event(loan, "LoanOffered", block=321, lender="0x" + "cd" * 20, amount=1, bondAmount=10**15)
    )
    loan.refresh_from_db()
    assert loan.status == LoanStatus.OFFERED
    assert loan.offer_block == 321
    assert loan.bond_wei == 10**15
    assert LoanWorkflow.objects.get(loan=loan).type == WorkflowType.COLLATERAL_SETUP


def test_activation_learns_p_b_and_locks_the_collateral_at_once(
    consumer, make_loan, django_capture_on_commit_callbacks, sent
):
    loan = make_loan(
        contract_address=CONTRACT, preimage_hash_borrower=H_B, status=LoanStatus.OFFERED
    )
    activated = event(
        loan,
        "LoanActivated",
        block=400,
        borrower="0x" + "ab" * 20,
        preimageBorrower="0x" + P_B.hex(),
    )
    with django_capture_on_commit_callbacks(execute=True):
        consumer.handle_event(activated)
        consumer.handle_event(activated)  # a duplicate delivery
    loan.refresh_from_db()
    assert loan.status == LoanStatus.ACTIVE
    assert loan.activation_block == 400
    assert loan.preimage_borrower == P_B.hex()
    assert sent == [("loans.lock_collateral", (loan.pk,))]
    assert AuditEntry.objects.filter(loan=loan, action="transition").count() == 1


def test_a_preimage_that_does_not_open_h_b_is_an_anomaly_not_an_activation(consumer, make_loan):
    loan = make_loan(
        contract_address=CONTRACT, preimage_hash_borrower=H_B, status=LoanStatus.OFFERED
    )
    activated = event(
        loan, "LoanActivated", borrower="0x" + "ab" * 20, preimageBorrower="0x" + "00" * 32
    )
    consumer.handle_event(activated)
    loan.refresh_from_db()
    assert loan.status == LoanStatus.OFFERED
    assert (
        AuditEntry.objects.get(loan=loan, action="anomaly")
        .details["problem"]
        .startswith("the revealed P_B")
    )


def test_a_repayment_is_accepted_only_when_it_repays_the_amount(
    consumer, make_loan, django_capture_on_commit_callbacks, sent
):
    good = make_loan(contract_address=CONTRACT, status=LoanStatus.ACTIVE)
    short = make_loan(contract_address=CONTRACT, status=LoanStatus.ACTIVE)
    with django_capture_on_commit_callbacks(execute=True):
        consumer.handle_event(
            event(
                good, "RepaymentAttempted", block=900, borrower="0x01", amount=int(good.amount_wei)
            )
        )
        consumer.handle_event(
            event(short, "RepaymentAttempted", block=901, borrower="0x01", amount=1)
        )
    good.refresh_from_db()
    short.refresh_from_db()
    assert good.status == short.status == LoanStatus.REPAYMENT_IN_PROGRESS
    assert good.repayment_block == 900
    assert sent == [("loans.accept_repayment", (good.pk,))]
    assert AuditEntry.objects.filter(loan=short, action="anomaly").exists()


@pytest.mark.parametrize(
    ("name", "start", "end", "task"),
    [
        ("LoanDefaulted", LoanStatus.ACTIVE, LoanStatus.DEFAULTED, "loans.sweep_collateral"),
        (
            "RepaymentRefundedToBorrowerWithBond",
            LoanStatus.REPAYMENT_IN_PROGRESS,
            LoanStatus.REFUNDED_TO_BORROWER,
            "loans.sweep_collateral",
        ),
        ("RepaymentAccepted", LoanStatus.REPAYMENT_IN_PROGRESS, LoanStatus.REPAID, None),
        ("LoanRefundedToLender", LoanStatus.OFFERED, LoanStatus.REFUNDED_TO_LENDER, None),
    ],
)
def test_terminal_events(
    consumer, make_loan, django_capture_on_commit_callbacks, sent, name, start, end, task
):
    loan = make_loan(contract_address=CONTRACT, status=start)
    with django_capture_on_commit_callbacks(execute=True):
        consumer.handle_event(event(loan, name, lender="0x01", bondAmount=1, borrower="0x01"))
    loan.refresh_from_db()
    assert loan.status == end
    # Then what the contract paid out is checked for money it kept (loans.accounting).
    follow_up = [(task, (loan.pk,))] if task else []
    assert sent == [*follow_up, ("loans.check_loan_accounting", (loan.pk,))]


def test_an_event_out_of_turn_is_refused_and_recorded(consumer, make_loan):
    loan = make_loan(contract_address=CONTRACT, status=LoanStatus.REQUESTED)
    consumer.handle_event(event(loan, "RepaymentAccepted", lender="0x01"))
    loan.refresh_from_db()
    assert loan.status == LoanStatus.REQUESTED
    assert AuditEntry.objects.get(loan=loan).action == "transition_refused"


def test_contract_wide_events_touch_no_loan(consumer):
    consumer.handle_event(event(None, "ParametersUpdated", loanId=0, loanDuration=5))
    assert AuditEntry.objects.count() == 0


def test_seed_loans_follow_the_global_duration_ours_keep_their_snapshot(consumer, make_loan):
    from loans.models import ContractFlavour

    def live(flavour: str, status: str) -> Any:
        return make_loan(
            contract_address=CONTRACT, contract_flavour=flavour, status=status, loan_duration=40
        )

    seed_active = live(ContractFlavour.SEED, LoanStatus.ACTIVE)
    seed_requested = live(ContractFlavour.SEED, LoanStatus.REQUESTED)
    seed_repaid = live(ContractFlavour.SEED, LoanStatus.REPAID)  # the contract reads D no more
    ours = live(ContractFlavour.BTCLOAN, LoanStatus.ACTIVE)
    consumer.handle_event(event(None, "ParametersUpdated", loanId=0, loanDuration=80))
    durations = {
        loan.pk: loan.loan_duration
        for loan in (seed_active, seed_requested, seed_repaid, ours)
        for loan in [type(loan).objects.get(pk=loan.pk)]
    }
    assert durations == {seed_active.pk: 80, seed_requested.pk: 80, seed_repaid.pk: 40, ours.pk: 40}
    followed = AuditEntry.objects.get(loan=seed_active, action="loan_duration_followed")
    assert followed.details == {"from": 40, "to": 80}
    # Replayed: nothing more.
    consumer.handle_event(event(None, "ParametersUpdated", loanId=0, loanDuration=80))
    assert AuditEntry.objects.filter(action="loan_duration_followed").count() == 2


# --- Bitcoin facts --------------------------------------------------------------------------
def escrow_payment(loan, kind: str, confirmations: int, height: int | None = 120):
    return fact(
        loan,
        kind,
        txid=loan.escrow_txid,
        vout=loan.escrow_vout,
        purpose="escrow",
        confirmations=confirmations,
        block_height=height,
    )


def test_the_escrow_deposit_is_seen_then_confirmed_at_depth(
    loan, settings, django_capture_on_commit_callbacks, sent
):
    settings.BITCOIN_CONFIRMATIONS = 3
    with django_capture_on_commit_callbacks(execute=True):
        on_bitcoin_fact(escrow_payment(loan, "payment_seen", 0, None))
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.ESCROW_SEEN
    assert sent == [("loans.prepare_collateral_lock", (loan.pk,))]
    on_bitcoin_fact(escrow_payment(loan, "payment_confirmed", 2))
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.ESCROW_SEEN  # not deep enough yet
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        on_bitcoin_fact(escrow_payment(loan, "payment_confirmed", 3))
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.ESCROW_CONFIRMED
    assert loan.escrow_confirmed_height == 120
    assert ("loans.evaluate_offer", (loan.pk,)) in sent


def test_a_payment_to_the_escrow_address_from_another_outpoint_is_only_recorded(loan):
    on_bitcoin_fact(
        fact(loan, "payment_seen", txid="ff" * 32, vout=3, purpose="escrow", confirmations=0)
    )
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.AWAITING_ESCROW
    assert AuditEntry.objects.get(loan=loan).action == "foreign_escrow_payment"


@pytest.mark.parametrize(
    ("status", "stage", "path", "after"),
    [
        (LoanStatus.REPAID, BitcoinStage.COLLATERAL_CONFIRMED, "collateral_release", "released"),
        (LoanStatus.DEFAULTED, BitcoinStage.COLLATERAL_CONFIRMED, "lender_sweep", "swept"),
        (LoanStatus.REFUNDED_TO_LENDER, BitcoinStage.ESCROW_CONFIRMED, "borrower_exit", "exited"),
    ],
)
def test_a_confirmed_final_spend_settles_and_closes_the_loan(
    make_loan, settings, status, stage, path, after
):
    settings.BITCOIN_CONFIRMATIONS = 2
    loan = make_loan(status=status, bitcoin_stage=stage)
    spend = {"purpose": "collateral", "path": path, "txid": "aa" * 32, "block_height": 300}
    on_bitcoin_fact(fact(loan, "spend_seen", confirmations=0, **spend))
    loan.refresh_from_db()
    assert loan.bitcoin_stage == after
    assert loan.status == status  # seen is not settled
    on_bitcoin_fact(fact(loan, "spend_confirmed", confirmations=2, **spend))
    loan.refresh_from_db()
    assert loan.status == LoanStatus.CLOSED


def test_tx1_confirmed_at_depth_records_the_collateral_height(make_loan, settings):
    settings.BITCOIN_CONFIRMATIONS = 2
    loan = make_loan(status=LoanStatus.ACTIVE, bitcoin_stage=BitcoinStage.COLLATERAL_LOCKED)
    payload = {"purpose": "collateral_lock", "txid": "bb" * 32, "block_height": 500}
    on_bitcoin_fact(fact(loan, "tx_confirmed", confirmations=1, **payload))
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.COLLATERAL_LOCKED
    on_bitcoin_fact(fact(loan, "tx_confirmed", confirmations=2, **payload))
    loan.refresh_from_db()
    assert loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED
    assert loan.collateral_confirmed_height == 500


def test_a_replaced_tx1_is_recorded_and_alerted(make_loan):
    from btcloan.models import Alert

    loan = make_loan(status=LoanStatus.ACTIVE, bitcoin_stage=BitcoinStage.COLLATERAL_LOCKED)
    on_bitcoin_fact(fact(loan, "tx_replaced", txid="cc" * 32, purpose="collateral_lock"))
    assert AuditEntry.objects.filter(loan=loan, action="bitcoin_transaction_replaced").exists()
    alert = Alert.objects.get(loan_ref=str(loan.pk))
    assert alert.severity == "critical"
    assert "replaced" in alert.title
