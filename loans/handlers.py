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
from typing import Any

from django.conf import settings

from loans.models import AuditCause, BitcoinStage, Loan, LoanStatus, WorkflowType
from loans.services.intake import loan_request_record
from loans.services.lifecycle import TransitionResult, loan_record, loan_transition
from loans.services.settlement import loan_close_if_settled
from loans.services.workflows import workflow_start
from loans.transitions import is_behind

logger = logging.getLogger(__name__)


class LoanNotYetKnown(Exception):
    """An event of a loan whose request is still being read: retried later, in order."""


def _hex(value: Any) -> str:
    return str(value).lower().removeprefix("0x")


def _lock_loan(event: Any) -> Loan:
    loan = (
        Loan.objects.select_for_update()
        .filter(
            chain_id=event.chain_id,
            contract_address=event.contract_address,
            onchain_id=Decimal(int(event.args["loanId"])),
        )
        .first()
    )
    if loan is None:
        raise LoanNotYetKnown(f"loan {event.args['loanId']} is not created yet")
    return loan


def _ref(event: Any) -> str:
    return f"evm:{event.transaction_hash}:{event.log_index}"


def _status(loan: Loan, to: LoanStatus, event: Any, **updates: Any) -> TransitionResult:
    return loan_transition(
        loan_id=loan.pk,
        field="status",
        to=to,
        cause=AuditCause.EVM_EVENT,
        cause_ref=_ref(event),
        details={"event": event.event_name, "block": event.block_number},
        updates=updates,
    )


def _later(task: Any, loan: Loan) -> None:
    task.delay_on_commit(loan.pk)


# --- EVM events -----------------------------------------------------------------------------
def on_loan_requested(event: Any) -> None:
    from loans.services.rederive import loan_request_restore

    intake = loan_request_record(
        chain_id=event.chain_id,
        contract_address=event.contract_address,
        onchain_id=int(event.args["loanId"]),
        request_block=event.block_number,
        event_ref=_ref(event),
        borrower_address=event.args["borrower"],
        amount_wei=int(event.args["amount"]),
        btc_address=event.args["btcAddress"],
    )
    if intake.loan_id is not None:  # a request seen before, orphaned by a reorg since?
        loan_request_restore(
            loan_id=intake.loan_id, request_block=event.block_number, cause_ref=_ref(event)
        )


def on_lender_hash_associated(event: Any, loan: Loan) -> None:
    loan_record(
        loan_id=loan.pk,
        action="lender_hash_associated",
        cause=AuditCause.EVM_EVENT,
        cause_ref=_ref(event),
        details={"preimage_hash_lender": _hex(event.args["preimageHashLender"])},
    )


def on_loan_offered(event: Any, loan: Loan) -> None:
    result = _status(
        loan,
        LoanStatus.OFFERED,
        event,
        offer_block=event.block_number,
        bond_wei=Decimal(int(event.args["bondAmount"])),
    )
    if result.applied:
        workflow_start(loan_id=loan.pk, type=WorkflowType.COLLATERAL_SETUP, step="await_acceptance")


def on_loan_activated(event: Any, loan: Loan) -> None:
    from loans.tasks import lock_collateral

    preimage = _hex(event.args["preimageBorrower"])
    if hashlib.sha256(bytes.fromhex(preimage)).hexdigest() != loan.preimage_hash_borrower:
        # The contract checks it through the swap; a mismatch means a foreign contract.
        loan_record(
            loan_id=loan.pk,
            action="anomaly",
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
        _later(lock_collateral, loan)


def on_loan_refunded_to_lender(event: Any, loan: Loan) -> None:
    _status(loan, LoanStatus.REFUNDED_TO_LENDER, event)
    loan_close_if_settled(loan_id=loan.pk)


def on_repayment_attempted(event: Any, loan: Loan) -> None:
    from loans.tasks import accept_repayment

    result = _status(
        loan, LoanStatus.REPAYMENT_IN_PROGRESS, event, repayment_block=event.block_number
    )
    if not result.applied:
        return
    workflow_start(loan_id=loan.pk, type=WorkflowType.REPAYMENT, step="accept_repayment")
    if int(event.args["amount"]) != int(loan.amount_wei):
        loan_record(
            loan_id=loan.pk,
            action="anomaly",
            cause=AuditCause.EVM_EVENT,
            cause_ref=_ref(event),
            details={
                "problem": "repayment amount differs from the loan amount",
                "repaid_wei": str(event.args["amount"]),
            },
        )
        return
    _later(accept_repayment, loan)


def on_repayment_accepted(event: Any, loan: Loan) -> None:
    _status(loan, LoanStatus.REPAID, event)
    loan_close_if_settled(loan_id=loan.pk)


def on_repayment_refunded(event: Any, loan: Loan) -> None:
    from loans.tasks import sweep_collateral

    if _status(loan, LoanStatus.REFUNDED_TO_BORROWER, event).applied:
        workflow_start(loan_id=loan.pk, type=WorkflowType.SETTLEMENT, step="sweep")
        _later(sweep_collateral, loan)


def on_loan_defaulted(event: Any, loan: Loan) -> None:
    from loans.tasks import sweep_collateral

    if _status(loan, LoanStatus.DEFAULTED, event).applied:
        workflow_start(loan_id=loan.pk, type=WorkflowType.DEFAULT, step="sweep")
        _later(sweep_collateral, loan)


def on_loan_deleted(event: Any, loan: Loan) -> None:
    if loan.status == LoanStatus.CLOSED:
        loan_record(
            loan_id=loan.pk,
            action="deleted_on_chain",
            cause=AuditCause.EVM_EVENT,
            cause_ref=_ref(event),
        )
        return
    _status(loan, LoanStatus.DELETED, event)
    loan_close_if_settled(loan_id=loan.pk)


LOAN_HANDLERS: dict[str, Callable[[Any, Loan], None]] = {
    "LenderPreimageHashAssociated": on_lender_hash_associated,
    "LoanOffered": on_loan_offered,
    "LoanActivated": on_loan_activated,
    "LoanRefundedToLender": on_loan_refunded_to_lender,
    "RepaymentAttempted": on_repayment_attempted,
    "RepaymentAccepted": on_repayment_accepted,
    "RepaymentRefundedToBorrowerWithBond": on_repayment_refunded,
    "LoanDefaulted": on_loan_defaulted,
    "LoanDeleted": on_loan_deleted,
}


def _replayed(loan: Loan, event: Any) -> bool:
    if loan.last_event_block is None or loan.last_event_log_index is None:
        return False
    return (event.block_number, event.log_index) <= (
        loan.last_event_block,
        loan.last_event_log_index,
    )


class LoanEventConsumer:
    """chainwatch's consumer: confirmed events in chain order. A replayed event (a duplicate
    delivery, a replay of indexed blocks) is recognised by its place on chain and ignored."""

    def handle_event(self, event: Any) -> None:
        if event.event_name == "LoanRequested":
            on_loan_requested(event)
            return
        handler = LOAN_HANDLERS.get(event.event_name)
        if handler is None:
            return  # contract-wide events (parameters, ownership, swaps) change no loan
        loan = _lock_loan(event)
        if _replayed(loan, event):
            return
        handler(event, loan)
        Loan.objects.filter(pk=loan.pk).update(
            last_event_block=event.block_number, last_event_log_index=event.log_index
        )

    def handle_reorg(self, notice: Any) -> None:
        from loans.services.rederive import loan_rederive_evm

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
def _fact_loan(fact: Any) -> Loan | None:
    if not str(fact.loan_ref).isdigit():
        return None
    return Loan.objects.select_for_update().filter(pk=int(fact.loan_ref)).first()


def _stage(loan: Loan, to: BitcoinStage, fact: Any, **updates: Any) -> TransitionResult | None:
    if is_behind(to, loan.bitcoin_stage):
        return None  # a late or repeated observation
    return loan_transition(
        loan_id=loan.pk,
        field="bitcoin_stage",
        to=to,
        cause=AuditCause.BITCOIN_FACT,
        cause_ref=f"btc-fact:{fact.pk}",
        details={"fact": fact.kind, "txid": fact.payload.get("txid")},
        updates=updates,
    )


def _is_escrow_payment(loan: Loan, payload: dict[str, Any]) -> bool:
    return payload.get("txid") == loan.escrow_txid and payload.get("vout") == loan.escrow_vout


def on_bitcoin_fact(fact: Any) -> None:
    """bitcoin's fact handler (registered in loans/apps.py)."""
    from loans.tasks import evaluate_offer, prepare_collateral_lock

    loan = _fact_loan(fact)
    if loan is None:
        return
    payload = fact.payload
    kind = fact.kind
    purpose = payload.get("purpose")
    if kind in ("payment_seen", "payment_confirmed") and purpose == "escrow":
        if not _is_escrow_payment(loan, payload):
            loan_record(
                loan_id=loan.pk,
                action="foreign_escrow_payment",
                cause=AuditCause.BITCOIN_FACT,
                cause_ref=f"btc-fact:{fact.pk}",
                details={"txid": payload.get("txid"), "vout": payload.get("vout")},
            )
            return
        if loan.bitcoin_stage == BitcoinStage.AWAITING_ESCROW:
            _stage(loan, BitcoinStage.ESCROW_SEEN, fact)
        depth = int(payload.get("confirmations") or 0)
        if kind == "payment_confirmed" and depth >= int(settings.BITCOIN_CONFIRMATIONS):
            result = _stage(
                loan,
                BitcoinStage.ESCROW_CONFIRMED,
                fact,
                escrow_confirmed_height=payload["block_height"],
            )
            if result is not None and result.applied and loan.borrower_signatures.exists():
                _stage(loan, BitcoinStage.PRESIGNED, fact)
            _later(evaluate_offer, loan)
        _later(prepare_collateral_lock, loan)
    elif kind in ("spend_seen", "spend_confirmed"):
        _on_spend(loan, fact)
    elif kind == "tx_confirmed" and purpose == "collateral_lock":
        if int(payload.get("confirmations") or 0) >= int(settings.BITCOIN_CONFIRMATIONS):
            _stage(
                loan,
                BitcoinStage.COLLATERAL_CONFIRMED,
                fact,
                collateral_confirmed_height=payload["block_height"],
            )
    elif kind in ("payment_orphaned", "payment_dropped", "spend_orphaned", "tx_orphaned"):
        from loans.services.rederive import loan_rederive_bitcoin

        loan_rederive_bitcoin(loan_id=loan.pk, cause_ref=f"btc-fact:{fact.pk}")
    elif kind in ("tx_failed", "tx_replaced"):
        from btcloan.alerts.services import alert_raise
        from loans.services.rederive import loan_rederive_bitcoin

        # Refused for good, or its input spent by someone else (TX_1 beaten by the borrower's
        # exit): an operator must look, and the stage follows what the chain shows.
        loan_record(
            loan_id=loan.pk,
            action=f"bitcoin_transaction_{kind.removeprefix('tx_')}",
            cause=AuditCause.BITCOIN_FACT,
            cause_ref=f"btc-fact:{fact.pk}",
            details={"txid": payload.get("txid"), "purpose": purpose},
        )
        alert_raise(
            key=f"loan:{loan.pk}:{kind}:{payload.get('txid')}",
            severity="critical",
            title=f"loan {loan.onchain_id}: our {purpose} transaction was {kind[3:]}",
            details={"txid": payload.get("txid"), "purpose": purpose},
            loan_ref=loan.pk,
        )
        loan_rederive_bitcoin(loan_id=loan.pk, cause_ref=f"btc-fact:{fact.pk}")


def _on_spend(loan: Loan, fact: Any) -> None:
    path = fact.payload.get("path")
    if path == "collateral_lock":
        if loan.bitcoin_stage == BitcoinStage.PRESIGNED:
            _stage(loan, BitcoinStage.COLLATERAL_LOCKED, fact)
        return
    target = {
        "borrower_exit": BitcoinStage.EXITED,
        "collateral_release": BitcoinStage.RELEASED,
        "lender_sweep": BitcoinStage.SWEPT,
    }.get(path or "")
    if target is None:
        loan_record(
            loan_id=loan.pk,
            action="anomaly",
            cause=AuditCause.BITCOIN_FACT,
            cause_ref=f"btc-fact:{fact.pk}",
            details={"problem": "a watched output was spent by an unknown path", "path": path},
        )
        return
    _stage(loan, target, fact)
    depth = int(fact.payload.get("confirmations") or 0)
    if fact.kind == "spend_confirmed" and depth >= int(settings.BITCOIN_CONFIRMATIONS):
        loan_close_if_settled(loan_id=loan.pk)


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
