"""Facts into loan state: confirmed EVM events (from chainwatch) and Bitcoin observations
(from bitcoin). Each handler runs inside the watcher's delivery transaction, under the loan's
row lock, never calls a chain, and enqueues the lender's next action on commit.

Handlers are idempotent: the transition service ignores a fact already applied, and every
follow-up task is itself idempotent.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings

from bitcoin.facts import Fact, PaymentPayload, SpendPayload, TxPayload
from bitcoin.models import FactKind, TxPurpose, WatchPurpose
from btcloan.alerts.services import alert_raise
from chainwatch.events import ChainEvent
from chainwatch.models import ReorgNotice
from loans.models import AuditAction, AuditCause, BitcoinStage, Loan, LoanStatus, WorkflowType
from loans.next_steps import NextStep, next_step_enqueue
from loans.services.collateral import collateral_watch
from loans.services.intake import loan_request_record
from loans.services.lifecycle import TransitionResult, loan_record, loan_transition
from loans.services.rederive import (
    loan_rederive_bitcoin,
    loan_rederive_evm,
    loan_request_restore,
)
from loans.services.settlement import loan_close_if_settled
from loans.services.workflows import workflow_start, workflows_complete
from loans.transitions import is_behind

logger = logging.getLogger(__name__)

LOAN_CONTRACT = "BtcCollateralLoan"
SWAP_CONTRACT = "EtherSwap"


class LoanNotYetKnown(Exception):
    """An event of a loan whose request is still being read: retried later, in order."""


def _hex(value: str) -> str:
    return value.lower().removeprefix("0x")


def _lock_loan(event: ChainEvent) -> Loan:
    loan = (
        Loan.objects.select_for_update()
        .filter(
            chain_id=event.chain_id,
            contract_address=event.contract_address,
            onchain_id=Decimal(event.uint("loanId")),
        )
        .first()
    )
    if loan is None:
        raise LoanNotYetKnown(f"loan {event.uint('loanId')} is not created yet")
    return loan


def _ref(event: ChainEvent) -> str:
    return f"evm:{event.transaction_hash}:{event.log_index}"


def _status(
    loan: Loan, to: LoanStatus, event: ChainEvent, **updates: int | str | Decimal
) -> TransitionResult:
    return loan_transition(
        loan_id=loan.pk,
        field="status",
        to=to,
        cause=AuditCause.EVM_EVENT,
        cause_ref=_ref(event),
        details={"event": event.event_name, "block": event.block_number},
        updates=updates,
    )


def _later(step: NextStep, loan: Loan) -> None:
    next_step_enqueue(step=step, target_id=loan.pk)


# --- EVM events -----------------------------------------------------------------------------
def on_loan_requested(event: ChainEvent) -> None:
    intake = loan_request_record(
        chain_id=event.chain_id,
        contract_address=event.contract_address,
        onchain_id=event.uint("loanId"),
        request_block=event.block_number,
        event_ref=_ref(event),
        borrower_address=event.text("borrower"),
        amount_wei=event.uint("amount"),
        btc_address=event.text("btcAddress"),
    )
    if intake.loan_id is not None:  # a request seen before, orphaned by a reorg since?
        loan_request_restore(
            loan_id=intake.loan_id, request_block=event.block_number, cause_ref=_ref(event)
        )


def on_parameters_updated(event: ChainEvent) -> None:
    """Contract-wide. The seed flavour's live loans read the global loanDuration: theirs
    follows it (btcloan's keep their snapshot)."""
    from loans.services.parameters import loans_duration_follow

    loans_duration_follow(
        chain_id=event.chain_id,
        contract_address=event.contract_address,
        loan_duration=event.uint("loanDuration"),
        cause=AuditCause.EVM_EVENT,
        cause_ref=_ref(event),
    )


def on_lender_hash_associated(event: ChainEvent, loan: Loan) -> None:
    loan_record(
        loan_id=loan.pk,
        action=AuditAction.LENDER_HASH_ASSOCIATED,
        cause=AuditCause.EVM_EVENT,
        cause_ref=_ref(event),
        details={"preimage_hash_lender": _hex(event.text("preimageHashLender"))},
    )


def on_loan_offered(event: ChainEvent, loan: Loan) -> None:
    was_invalid = loan.status == LoanStatus.INVALID
    result = _status(
        loan,
        LoanStatus.OFFERED,
        event,
        offer_block=event.block_number,
        bond_wei=Decimal(event.uint("bondAmount")),
        invalid_reason="",
    )
    if not result.applied:
        return
    if was_invalid:
        _taken_up(event, loan)
    workflows_complete(loan_id=loan.pk, types=(WorkflowType.ESCROW_SETUP,), failed_too=True)
    workflow_start(loan_id=loan.pk, type=WorkflowType.COLLATERAL_SETUP, step="await_acceptance")


def _taken_up(event: ChainEvent, loan: Loan) -> None:
    """The contract holds open a loan the backend had given up: follow the chain, and tell."""
    alert_raise(
        key=f"loan:{loan.pk}:taken_up",
        severity="critical",
        title=f"loan {loan.onchain_id}: offered on chain although judged invalid; taken up again",
        details={"invalid_reason": loan.invalid_reason, "event": _ref(event)},
        loan_ref=loan.pk,
    )
    loan_record(
        loan_id=loan.pk,
        action=AuditAction.TAKEN_UP_AGAIN,
        cause=AuditCause.EVM_EVENT,
        cause_ref=_ref(event),
        details={"invalid_reason": loan.invalid_reason},
    )


def on_loan_activated(event: ChainEvent, loan: Loan) -> None:
    preimage = _hex(event.text("preimageBorrower"))
    if hashlib.sha256(bytes.fromhex(preimage)).hexdigest() != loan.preimage_hash_borrower:
        # The contract checks it through the swap; a mismatch means a foreign contract.
        loan_record(
            loan_id=loan.pk,
            action=AuditAction.ANOMALY,
            cause=AuditCause.EVM_EVENT,
            cause_ref=_ref(event),
            details={"problem": "the revealed P_B does not hash to H_B"},
        )
        return
    result = _status(
        loan,
        LoanStatus.ACTIVE,
        event,
        activation_block=event.block_number,
        preimage_borrower=preimage,
    )
    if result.applied:
        _later(NextStep.LOCK_COLLATERAL, loan)


def _settled_on_contract(loan: Loan) -> None:
    """The contract has paid out what it will for the loan: check its accounting for money
    left in the contract (the seed flavour keeps some)."""
    _later(NextStep.CHECK_ACCOUNTING, loan)


def on_loan_refunded_to_lender(event: ChainEvent, loan: Loan) -> None:
    if _status(loan, LoanStatus.REFUNDED_TO_LENDER, event).applied:
        _settled_on_contract(loan)
    loan_close_if_settled(loan_id=loan.pk)


def on_repayment_attempted(event: ChainEvent, loan: Loan) -> None:
    result = _status(
        loan, LoanStatus.REPAYMENT_IN_PROGRESS, event, repayment_block=event.block_number
    )
    if not result.applied:
        return
    workflow_start(loan_id=loan.pk, type=WorkflowType.REPAYMENT, step="accept_repayment")
    if event.uint("amount") != int(loan.amount_wei):
        loan_record(
            loan_id=loan.pk,
            action=AuditAction.ANOMALY,
            cause=AuditCause.EVM_EVENT,
            cause_ref=_ref(event),
            details={
                "problem": "repayment amount differs from the loan amount",
                "repaid_wei": str(event.uint("amount")),
            },
        )
        return
    _later(NextStep.ACCEPT_REPAYMENT, loan)


def on_repayment_accepted(event: ChainEvent, loan: Loan) -> None:
    if _status(loan, LoanStatus.REPAID, event).applied:
        _settled_on_contract(loan)
    loan_close_if_settled(loan_id=loan.pk)


def on_repayment_refunded(event: ChainEvent, loan: Loan) -> None:
    if _status(loan, LoanStatus.REFUNDED_TO_BORROWER, event).applied:
        workflow_start(loan_id=loan.pk, type=WorkflowType.SETTLEMENT, step="sweep")
        _later(NextStep.SWEEP_COLLATERAL, loan)
        _settled_on_contract(loan)


def on_loan_defaulted(event: ChainEvent, loan: Loan) -> None:
    if _status(loan, LoanStatus.DEFAULTED, event).applied:
        workflow_start(loan_id=loan.pk, type=WorkflowType.DEFAULT, step="sweep")
        _later(NextStep.SWEEP_COLLATERAL, loan)
        _settled_on_contract(loan)


def on_loan_deleted(event: ChainEvent, loan: Loan) -> None:
    if loan.status == LoanStatus.CLOSED:
        loan_record(
            loan_id=loan.pk,
            action=AuditAction.DELETED_ON_CHAIN,
            cause=AuditCause.EVM_EVENT,
            cause_ref=_ref(event),
        )
        return
    _status(loan, LoanStatus.DELETED, event)
    loan_close_if_settled(loan_id=loan.pk)


EventKey = tuple[str, str]  # (contract name, event name)
RequestHandler = Callable[[ChainEvent], None]
LoanEventHandler = Callable[[ChainEvent, Loan], None]

# Events with no one loan's row to lock: a request (no loan yet), the global parameters.
REQUEST_HANDLERS: dict[EventKey, RequestHandler] = {
    (LOAN_CONTRACT, "LoanRequested"): on_loan_requested,
    (LOAN_CONTRACT, "ParametersUpdated"): on_parameters_updated,
}
# Events of one loan: applied under its row lock, in chain order.
LOAN_EVENT_HANDLERS: dict[EventKey, LoanEventHandler] = {
    (LOAN_CONTRACT, "LenderPreimageHashAssociated"): on_lender_hash_associated,
    (LOAN_CONTRACT, "LoanOffered"): on_loan_offered,
    (LOAN_CONTRACT, "LoanActivated"): on_loan_activated,
    (LOAN_CONTRACT, "LoanRefundedToLender"): on_loan_refunded_to_lender,
    (LOAN_CONTRACT, "RepaymentAttempted"): on_repayment_attempted,
    (LOAN_CONTRACT, "RepaymentAccepted"): on_repayment_accepted,
    (LOAN_CONTRACT, "RepaymentRefundedToBorrowerWithBond"): on_repayment_refunded,
    (LOAN_CONTRACT, "LoanDefaulted"): on_loan_defaulted,
    (LOAN_CONTRACT, "LoanDeleted"): on_loan_deleted,
}
# Every other event of both contracts, and why no loan changes with it.
IGNORED_EVENTS: dict[EventKey, str] = {
    (LOAN_CONTRACT, "LenderUpdated"): (
        "contract-wide; the lender's key is read from the contract at each loan's intake"
    ),
    (LOAN_CONTRACT, "EtherSwapAddressSet"): "contract-wide; the swap address is configuration",
    (LOAN_CONTRACT, "OwnershipTransferred"): "contract-wide; ownership moves no loan",
    (SWAP_CONTRACT, "Lockup"): (
        "the loan's RepaymentAttempted carries the repayment; the acceptance re-reads the "
        "swap itself when it is signed"
    ),
    (SWAP_CONTRACT, "Claim"): "the loan contract's RepaymentAccepted/LoanActivated tell it",
    (SWAP_CONTRACT, "Refund"): (
        "the loan contract's RepaymentRefundedToBorrowerWithBond/LoanRefundedToLender tell it"
    ),
}


def _replayed(loan: Loan, event: ChainEvent) -> bool:
    if loan.last_event_block is None or loan.last_event_log_index is None:
        return False
    return event.position <= (loan.last_event_block, loan.last_event_log_index)


class LoanEventConsumer:
    """chainwatch's consumer: confirmed events in chain order. A replayed event (a duplicate
    delivery, a replay of indexed blocks) is recognised by its place on chain and ignored."""

    def handle_event(self, event: ChainEvent) -> None:
        key = (event.contract_name, event.event_name)
        request_handler = REQUEST_HANDLERS.get(key)
        if request_handler is not None:
            request_handler(event)
            return
        handler = LOAN_EVENT_HANDLERS.get(key)
        if handler is None:
            if key not in IGNORED_EVENTS:
                logger.warning("event %s of %s has no handler: ignored", *reversed(key))
            return
        loan = _lock_loan(event)
        if _replayed(loan, event):
            return
        handler(event, loan)
        Loan.objects.filter(pk=loan.pk).update(
            last_event_block=event.block_number, last_event_log_index=event.log_index
        )

    def handle_reorg(self, notice: ReorgNotice) -> None:
        if notice.loan_id is None:
            return  # a swap's key: no loan to re-derive
        loan = (
            Loan.objects.select_for_update()
            .filter(
                chain_id=notice.chain_id,
                contract_address=notice.contract_address,
                onchain_id=notice.loan_id,
            )
            .first()
        )
        if loan is not None:
            loan_rederive_evm(loan_id=loan.pk, fork_block=notice.fork_block_number)


# --- Bitcoin facts --------------------------------------------------------------------------
def _fact_loan(fact: Fact) -> Loan | None:
    if not fact.loan_ref.isdigit():
        return None
    return Loan.objects.select_for_update().filter(pk=int(fact.loan_ref)).first()


def _fact_ref(fact: Fact) -> str:
    return f"btc-fact:{fact.id}"


def _stage(
    loan: Loan, to: BitcoinStage, fact: Fact, **updates: int | None
) -> TransitionResult | None:
    if is_behind(to, loan.bitcoin_stage):
        return None  # a late or repeated observation
    return loan_transition(
        loan_id=loan.pk,
        field="bitcoin_stage",
        to=to,
        cause=AuditCause.BITCOIN_FACT,
        cause_ref=_fact_ref(fact),
        details={"fact": fact.kind.value, "txid": fact.payload.txid},
        updates=updates,
    )


def _deep_enough(confirmations: int) -> bool:
    return confirmations >= int(settings.BITCOIN_CONFIRMATIONS)


def on_escrow_payment(fact: Fact, payment: PaymentPayload, loan: Loan) -> None:
    if (payment.txid, payment.vout) != (loan.escrow_txid, loan.escrow_vout):
        loan_record(
            loan_id=loan.pk,
            action=AuditAction.FOREIGN_ESCROW_PAYMENT,
            cause=AuditCause.BITCOIN_FACT,
            cause_ref=_fact_ref(fact),
            details={"txid": payment.txid, "vout": payment.vout},
        )
        return
    if loan.bitcoin_stage == BitcoinStage.AWAITING_ESCROW:
        _stage(loan, BitcoinStage.ESCROW_SEEN, fact)
    if fact.kind == FactKind.PAYMENT_CONFIRMED and _deep_enough(payment.confirmations):
        result = _stage(
            loan,
            BitcoinStage.ESCROW_CONFIRMED,
            fact,
            escrow_confirmed_height=payment.block_height,
        )
        if result is not None and result.applied and loan.borrower_signatures.exists():
            _stage(loan, BitcoinStage.PRESIGNED, fact)
        _later(NextStep.EVALUATE_OFFER, loan)
    _later(NextStep.OBSERVE_ESCROW, loan)


def on_payment(fact: Fact, loan: Loan) -> None:
    payment = fact.payload
    if isinstance(payment, PaymentPayload) and payment.purpose == WatchPurpose.ESCROW:
        on_escrow_payment(fact, payment, loan)


# The stage a spend of a watched output through each of the protocol's paths leads to.
SPEND_STAGES: dict[TxPurpose, BitcoinStage] = {
    TxPurpose.BORROWER_EXIT: BitcoinStage.EXITED,
    TxPurpose.COLLATERAL_RELEASE: BitcoinStage.RELEASED,
    TxPurpose.LENDER_SWEEP: BitcoinStage.SWEPT,
}


def on_tx1_spend(fact: Fact, spend: SpendPayload, loan: Loan) -> None:
    """TX_1 spent the escrow: the collateral is locked, and confirmed at depth. Also when TX_1
    was mined without our broadcast (it replaced a borrower exit seen first): its collateral
    output is watched from now on, whoever sent it."""
    if loan.collateral_txid == spend.txid:
        collateral_watch(loan=loan)
    if loan.bitcoin_stage == BitcoinStage.PRESIGNED:
        _stage(loan, BitcoinStage.COLLATERAL_LOCKED, fact)
    if fact.kind == FactKind.SPEND_CONFIRMED and _deep_enough(spend.confirmations):
        _stage(
            loan,
            BitcoinStage.COLLATERAL_CONFIRMED,
            fact,
            collateral_confirmed_height=spend.block_height,
        )


def on_spend(fact: Fact, loan: Loan) -> None:
    spend = fact.payload
    if not isinstance(spend, SpendPayload):
        return
    if spend.path == TxPurpose.COLLATERAL_LOCK:
        on_tx1_spend(fact, spend, loan)
        return
    target = SPEND_STAGES.get(spend.path) if spend.path is not None else None
    if target is None:
        loan_record(
            loan_id=loan.pk,
            action=AuditAction.ANOMALY,
            cause=AuditCause.BITCOIN_FACT,
            cause_ref=_fact_ref(fact),
            details={
                "problem": "a watched output was spent by an unknown path",
                "path": spend.path,
            },
        )
        return
    _stage(loan, target, fact)
    if fact.kind == FactKind.SPEND_CONFIRMED and _deep_enough(spend.confirmations):
        loan_close_if_settled(loan_id=loan.pk)


def on_tx_confirmed(fact: Fact, loan: Loan) -> None:
    tx = fact.payload
    if not isinstance(tx, TxPayload) or tx.purpose != TxPurpose.COLLATERAL_LOCK:
        return  # the release and the sweep are spends of a watched output: seen there
    if _deep_enough(tx.confirmations):
        _stage(
            loan,
            BitcoinStage.COLLATERAL_CONFIRMED,
            fact,
            collateral_confirmed_height=tx.block_height,
        )


def on_observation_gone(fact: Fact, loan: Loan) -> None:
    """A block reorged out, or a mempool transaction dropped (replaced, expired): the stage
    is what the surviving observations show. A dropped borrower exit that TX_1 replaced
    leaves the loan collateral-locked again, so TX_1's later facts apply."""
    loan_rederive_bitcoin(loan_id=loan.pk, cause_ref=_fact_ref(fact))


GIVEN_UP_ACTIONS = {
    FactKind.TX_FAILED: AuditAction.BITCOIN_TRANSACTION_FAILED,
    FactKind.TX_REPLACED: AuditAction.BITCOIN_TRANSACTION_REPLACED,
}


def on_tx_given_up(fact: Fact, loan: Loan) -> None:
    """Refused for good, or its input spent by someone else (TX_1 beaten by the borrower's
    exit): an operator must look, and the stage follows what the chain shows."""
    tx = fact.payload
    outcome = fact.kind.value.removeprefix("tx_")
    action = GIVEN_UP_ACTIONS[fact.kind]
    purpose = tx.purpose if isinstance(tx, TxPayload) else TxPurpose.OTHER
    loan_record(
        loan_id=loan.pk,
        action=action,
        cause=AuditCause.BITCOIN_FACT,
        cause_ref=_fact_ref(fact),
        details={"txid": tx.txid, "purpose": purpose.value},
    )
    alert_raise(
        key=f"loan:{loan.pk}:{fact.kind.value}:{tx.txid}",
        severity="critical",
        title=f"loan {loan.onchain_id}: our {purpose.value} transaction was {outcome}",
        details={"txid": tx.txid, "purpose": purpose.value},
        loan_ref=loan.pk,
    )
    loan_rederive_bitcoin(loan_id=loan.pk, cause_ref=_fact_ref(fact))


FactHandler = Callable[[Fact, Loan], None]

# Every FactKind has a handler here or a reason in IGNORED_FACTS (a test enumerates both).
FACT_HANDLERS: dict[FactKind, FactHandler] = {
    FactKind.PAYMENT_SEEN: on_payment,
    FactKind.PAYMENT_CONFIRMED: on_payment,
    FactKind.PAYMENT_ORPHANED: on_observation_gone,
    FactKind.PAYMENT_DROPPED: on_observation_gone,
    FactKind.SPEND_SEEN: on_spend,
    FactKind.SPEND_CONFIRMED: on_spend,
    FactKind.SPEND_ORPHANED: on_observation_gone,
    FactKind.SPEND_DROPPED: on_observation_gone,
    FactKind.TX_CONFIRMED: on_tx_confirmed,
    FactKind.TX_ORPHANED: on_observation_gone,
    FactKind.TX_FAILED: on_tx_given_up,
    FactKind.TX_REPLACED: on_tx_given_up,
}
IGNORED_FACTS: dict[FactKind, str] = {}


def on_bitcoin_fact(fact: Fact) -> None:
    """bitcoin's fact handler (registered in loans/apps.py)."""
    loan = _fact_loan(fact)
    if loan is None:
        return
    handler = FACT_HANDLERS.get(fact.kind)
    if handler is None:
        if fact.kind not in IGNORED_FACTS:
            logger.warning("bitcoin fact %s has no handler: ignored", fact.kind)
        return
    handler(fact, loan)


def _lender_preimage(loan_ref: str) -> bytes:
    from loans.services.preimages import lender_preimage_reveal

    return lender_preimage_reveal(loan_id=int(loan_ref))


def register() -> None:
    """Hand both watchers their consumer (from LoansConfig.ready), and the outbox the one
    secret a lender call carries: P_L, resolved only when acceptLoanRepayment is signed."""
    from bitcoin.facts import register_fact_handler
    from chainwatch.outbox.calls import register_secret_resolver
    from chainwatch.services import register_event_consumer
    from loans.services.lender import LENDER_PREIMAGE_MARKER

    register_event_consumer(LoanEventConsumer())
    register_fact_handler(on_bitcoin_fact)
    register_secret_resolver(LENDER_PREIMAGE_MARKER, _lender_preimage)
