"""After a reorg: the loan's state again, from the facts that survived.

This is the one place that moves a loan backwards, so it does not go through the transition
table; it writes the derived state with a `rederived` audit row naming what changed. The new
branch's facts then arrive and are applied as usual.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bitcoin.models import ObservationStatus, TxPurpose, TxStatus
from bitcoin.selectors import payments_for_loan, spends_for_loan, transactions_for_loan
from chainwatch.models import DeliveryStatus, EvmEvent
from loans.models import AuditAction, AuditCause, AuditEntry, BitcoinStage, Loan, LoanStatus

EVENT_STATUS = {
    "LoanRequested": LoanStatus.REQUESTED,
    "LoanOffered": LoanStatus.OFFERED,
    "LoanActivated": LoanStatus.ACTIVE,
    "LoanRefundedToLender": LoanStatus.REFUNDED_TO_LENDER,
    "RepaymentAttempted": LoanStatus.REPAYMENT_IN_PROGRESS,
    "RepaymentAccepted": LoanStatus.REPAID,
    "RepaymentRefundedToBorrowerWithBond": LoanStatus.REFUNDED_TO_BORROWER,
    "LoanDefaulted": LoanStatus.DEFAULTED,
    "LoanDeleted": LoanStatus.DELETED,
}
# What each event recorded on the loan, forgotten when the event is orphaned.
EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "LoanOffered": {"offer_block": None},
    "LoanActivated": {"activation_block": None, "preimage_borrower": ""},
    "RepaymentAttempted": {"repayment_block": None},
}


# A loan whose request a reorg orphaned; it lives again when the request is mined again.
ORPHANED_REQUEST = "request orphaned by a reorg"


def _write(loan: Loan, changes: dict[str, Any], cause: AuditCause, cause_ref: str) -> bool:
    changes = {k: v for k, v in changes.items() if getattr(loan, k) != v}
    if not changes:
        return False
    Loan.objects.filter(pk=loan.pk).update(**changes, updated_at=timezone.now())
    AuditEntry.objects.create(
        loan=loan,
        cause=cause,
        cause_ref=cause_ref,
        action=AuditAction.REDERIVED,
        details={
            name: {"from": str(getattr(loan, name)), "to": str(value)}
            for name, value in changes.items()
        },
    )
    return True


def loan_rederive_evm(*, loan_id: int, fork_block: int) -> bool:
    """The EVM status from the loan's events that survived a reorg past `fork_block`."""
    with transaction.atomic():
        loan = Loan.objects.select_for_update().get(pk=loan_id)
        if loan.status in (LoanStatus.INVALID, LoanStatus.CLOSED):
            return False
        surviving_events = list(
            EvmEvent.objects.filter(
                chain_id=loan.chain_id,
                contract_address=loan.contract_address,
                loan_id=loan.onchain_id,
                status=DeliveryStatus.PROCESSED,
            )
            .order_by("block_number", "log_index")
            .values_list("event_name", "block_number", "log_index")
        )
        surviving = [name for name, _block, _index in surviving_events if name in EVENT_STATUS]
        changes: dict[str, Any] = {}
        for name, fields in EVENT_FIELDS.items():
            if name not in surviving:
                changes.update(fields)
        if not surviving:
            changes.update(status=LoanStatus.INVALID, invalid_reason=ORPHANED_REQUEST)
        else:
            changes["status"] = EVENT_STATUS[surviving[-1]]
        last = surviving_events[-1] if surviving_events else None
        changes["last_event_block"] = last[1] if last else None
        changes["last_event_log_index"] = last[2] if last else None
        return _write(loan, changes, AuditCause.EVM_EVENT, f"evm-reorg:{fork_block}")


def loan_request_restore(*, loan_id: int, request_block: int, cause_ref: str) -> bool:
    """The request of a loan a reorg orphaned was mined again on the new branch (its
    transaction went back to the mempool): the loan is requested again, from that block."""
    with transaction.atomic():
        loan = Loan.objects.select_for_update().get(pk=loan_id)
        if loan.status != LoanStatus.INVALID or loan.invalid_reason != ORPHANED_REQUEST:
            return False
        changes = {
            "status": LoanStatus.REQUESTED,
            "invalid_reason": "",
            "request_block": request_block,
        }
        return _write(loan, changes, AuditCause.EVM_EVENT, cause_ref)


def derive_bitcoin_stage(loan: Loan) -> dict[str, Any]:
    """The Bitcoin stage (and confirmation heights) the bitcoin app's observations show now."""
    ref = str(loan.pk)
    depth = int(settings.BITCOIN_CONFIRMATIONS)
    spends = {
        s.watched.purpose: s
        for s in spends_for_loan(loan_ref=ref).select_related("watched")
        if s.status != ObservationStatus.DROPPED
    }
    collateral_spend = spends.get("collateral")
    if collateral_spend is not None and collateral_spend.leaf_index in (0, 1):
        stage = BitcoinStage.SWEPT if collateral_spend.leaf_index == 0 else BitcoinStage.RELEASED
        return {"bitcoin_stage": stage}
    escrow_spend = spends.get("escrow")
    if escrow_spend is not None and escrow_spend.leaf_index == 0:
        return {"bitcoin_stage": BitcoinStage.EXITED}
    lock = transactions_for_loan(loan_ref=ref).filter(purpose=TxPurpose.COLLATERAL_LOCK).first()
    if lock is not None and lock.status == TxStatus.CONFIRMED and lock.confirmations >= depth:
        return {
            "bitcoin_stage": BitcoinStage.COLLATERAL_CONFIRMED,
            "collateral_confirmed_height": lock.block_height,
        }
    locked = (lock is not None and lock.status not in (TxStatus.BUILT, TxStatus.FAILED)) or (
        escrow_spend is not None and escrow_spend.leaf_index == 1
    )
    if locked:
        return {
            "bitcoin_stage": BitcoinStage.COLLATERAL_LOCKED,
            "collateral_confirmed_height": None,
        }
    deposit = (
        payments_for_loan(loan_ref=ref)
        .filter(txid=loan.escrow_txid, vout=loan.escrow_vout)
        .exclude(status=ObservationStatus.DROPPED)
        .first()
    )
    reset = {"collateral_confirmed_height": None}
    if deposit is None:
        return {
            **reset,
            "bitcoin_stage": BitcoinStage.AWAITING_ESCROW,
            "escrow_confirmed_height": None,
        }
    if deposit.status == ObservationStatus.CONFIRMED and deposit.confirmations >= depth:
        stage = (
            BitcoinStage.PRESIGNED
            if loan.borrower_signatures.exists()
            else BitcoinStage.ESCROW_CONFIRMED
        )
        return {**reset, "bitcoin_stage": stage, "escrow_confirmed_height": deposit.block_height}
    return {**reset, "bitcoin_stage": BitcoinStage.ESCROW_SEEN, "escrow_confirmed_height": None}


def loan_rederive_bitcoin(*, loan_id: int, cause_ref: str) -> bool:
    with transaction.atomic():
        loan = Loan.objects.select_for_update().get(pk=loan_id)
        if loan.status in (LoanStatus.INVALID, LoanStatus.CLOSED):
            return False
        return _write(loan, derive_bitcoin_stage(loan), AuditCause.BITCOIN_FACT, cause_ref)
