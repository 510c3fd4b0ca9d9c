"""The seed flavour's global loan duration: its live loans read the contract's current
loanDuration, not their snapshot, so each loan's `loan_duration` (and with it the repayment and
default deadlines) follows every ParametersUpdated, audited on the loan.

btcloan's contract reads the snapshot: its loans never change here.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from btcloan.alerts.services import alert_raise
from loans.models import AuditAction, AuditCause, ContractFlavour, Loan, LoanStatus
from loans.services.lifecycle import loan_record

# Statuses in which the contract will still read loanDuration (repay, default).
READS_DURATION = (LoanStatus.REQUESTED, LoanStatus.OFFERED, LoanStatus.ACTIVE)


def loans_duration_follow(
    *,
    chain_id: int,
    contract_address: str,
    loan_duration: int,
    cause: AuditCause,
    cause_ref: str = "",
) -> int:
    """Give every live seed-flavour loan of the contract the global `loan_duration`; returns
    how many changed. Idempotent: a loan already at that value is left alone."""
    changed = 0
    with transaction.atomic():
        loans = (
            Loan.objects.select_for_update()
            .filter(
                chain_id=chain_id,
                contract_address__iexact=contract_address,
                contract_flavour=ContractFlavour.SEED,
                status__in=READS_DURATION,
            )
            .exclude(loan_duration=loan_duration)
        )
        for loan in loans:
            loan_record(
                loan_id=loan.pk,
                action=AuditAction.LOAN_DURATION_FOLLOWED,
                cause=cause,
                cause_ref=cause_ref,
                details={"from": loan.loan_duration, "to": loan_duration},
            )
            Loan.objects.filter(pk=loan.pk).update(
                loan_duration=loan_duration, updated_at=timezone.now()
            )
            _alert_if_past_the_collateral_lock(loan, loan_duration)
            changed += 1
    return changed


def _alert_if_past_the_collateral_lock(loan: Loan, loan_duration: int) -> None:
    """t_1 > t_L + D keeps the sweep behind any repayment; a longer global D can break it for
    a loan whose collateral lock was fixed before (the borrower could then repay after the
    lender may sweep): the operator must know."""
    if loan.timelock_btc_collateral > loan.timelock_lender + loan_duration:
        return
    alert_raise(
        key=f"loan:{loan.pk}:duration_past_collateral_lock",
        severity="critical",
        title=(
            f"loan {loan.onchain_id}: the contract's loanDuration is now {loan_duration} "
            f"blocks; with t_L {loan.timelock_lender} it reaches past the collateral's t_1 "
            f"({loan.timelock_btc_collateral})"
        ),
        details={"loan_duration": loan_duration, "t_1": loan.timelock_btc_collateral},
        loan_ref=loan.pk,
    )
