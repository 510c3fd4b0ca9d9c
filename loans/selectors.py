"""Reads of the loan domain."""

from __future__ import annotations

from django.db.models import QuerySet

from loans.models import AuditEntry, Loan, LoanStatus, LoanWorkflow

# Loans with something still to do on either chain.
OPEN_STATUSES = frozenset(LoanStatus) - {LoanStatus.CLOSED, LoanStatus.INVALID}


def loan_get(*, chain_id: int, contract_address: str, onchain_id: int) -> Loan | None:
    return Loan.objects.filter(
        chain_id=chain_id, contract_address=contract_address, onchain_id=onchain_id
    ).first()


def loans_open() -> QuerySet[Loan]:
    return Loan.objects.filter(status__in=OPEN_STATUSES).order_by("id")


def loans_of_borrower(*, address: str) -> QuerySet[Loan]:
    return Loan.objects.filter(borrower_address__iexact=address).order_by("-id")


def loan_audit_trail(*, loan_id: int) -> QuerySet[AuditEntry]:
    return AuditEntry.objects.filter(loan_id=loan_id).order_by("at", "id")


def loan_workflows(*, loan_id: int) -> QuerySet[LoanWorkflow]:
    return LoanWorkflow.objects.filter(loan_id=loan_id).order_by("created_at")
