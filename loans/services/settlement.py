"""Closing a loan: once both chains are settled, nothing is left to watch or do."""

from __future__ import annotations

from django.db import transaction

from bitcoin.services.watch import watch_stop
from loans.models import AuditCause, BitcoinStage, ContractFlavour, Loan, LoanStatus
from loans.services.lifecycle import loan_transition
from loans.services.workflows import workflows_complete

# (EVM outcome, Bitcoin outcome) pairs that leave nothing to do. A repaid loan whose
# borrower never released is swept by the lender once t1 matures: settled too.
_S, _B = LoanStatus, BitcoinStage
SETTLED = {
    (_S.REPAID, _B.RELEASED),
    (_S.REPAID, _B.SWEPT),
    (_S.DEFAULTED, _B.SWEPT),
    (_S.DEFAULTED, _B.RELEASED),
    (_S.REFUNDED_TO_BORROWER, _B.SWEPT),
    (_S.REFUNDED_TO_BORROWER, _B.RELEASED),
    (_S.REFUNDED_TO_LENDER, _B.EXITED),
    (_S.REQUESTED, _B.EXITED),  # never offered; the borrower took the escrow back
}


def is_settled(status: str, stage: str) -> bool:
    return (status, stage) in SETTLED


def loan_close_if_settled(*, loan_id: int) -> bool:
    """Close the loan when both chains are settled; stop watching its outputs."""
    with transaction.atomic():
        loan = Loan.objects.select_for_update().get(pk=loan_id)
        status = evm_outcome(loan)
        if not is_settled(status, loan.bitcoin_stage):
            return False
        result = loan_transition(
            loan_id=loan_id,
            field="status",
            to=LoanStatus.CLOSED,
            cause=AuditCause.BACKEND,
            details={"outcome": status, "bitcoin": loan.bitcoin_stage},
        )
        if result.applied:
            watch_stop(loan_ref=str(loan_id))
            workflows_complete(loan_id=loan_id)
            _housekeep(loan, status)
        return result.applied


# Statuses deleteCompletedLoan accepts.
DELETABLE = frozenset({_S.REFUNDED_TO_LENDER, _S.REPAID, _S.REFUNDED_TO_BORROWER, _S.DEFAULTED})


def _housekeep(loan: Loan, outcome: str) -> None:
    """The seed's contract refuses a borrower's next request until their closed loan is
    deleted: the lender deletes it once both chains are settled. (btcloan's contract lets
    them borrow again; its record is kept on chain.)"""
    from loans.next_steps import NextStep, next_step_enqueue

    if loan.contract_flavour == ContractFlavour.SEED and outcome in DELETABLE:
        next_step_enqueue(step=NextStep.DELETE_LOAN, target_id=loan.pk)


def evm_outcome(loan: Loan) -> str:
    """The loan's EVM status; for a deleted loan, the status it had reached before deletion
    (the contract forgets it; the audit trail does not)."""
    if loan.status != LoanStatus.DELETED:
        return loan.status
    last = (
        loan.audit_entries.filter(field="status", applied=True, to_value=LoanStatus.DELETED)
        .values_list("from_value", flat=True)
        .last()
    )
    return last or loan.status
