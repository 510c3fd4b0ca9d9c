"""Each loan's EVM accounting (loans.accounting) from its recorded outcome, and the alert on
money the loan contract keeps although a party is owed it (docs/runbook.md, "Money stranded
in the loan contract")."""

from __future__ import annotations

from dataclasses import dataclass

from btcloan.alerts.services import alert_raise, alert_resolve
from loans.accounting import Flow, loan_flows, stranded_wei
from loans.models import CONTRACT_STATUSES, AuditEntry, Loan, LoanStatus

FINAL = (LoanStatus.CLOSED, LoanStatus.DELETED, LoanStatus.INVALID)


@dataclass(frozen=True)
class LoanAccounting:
    outcome: str
    flows: list[Flow]

    @property
    def stranded_wei(self) -> int:
        return stranded_wei(self.flows)


def contract_outcome(loan: Loan, *, audit_trail: list[AuditEntry] | None = None) -> str:
    """The last status the contract gave the loan (the audit trail keeps it past closing and
    deletion); `invalid` for a finished loan that was never offered. `audit_trail`: the
    loan's in its order (at, id), when the caller has read it already."""
    if loan.status in CONTRACT_STATUSES:
        return loan.status
    contract_values = [s.value for s in CONTRACT_STATUSES]
    last: str | None
    if audit_trail is None:
        last = (
            loan.audit_entries.filter(field="status", applied=True, to_value__in=contract_values)
            .values_list("to_value", flat=True)
            .last()
        )
    else:
        last = next(
            (
                a.to_value
                for a in reversed(audit_trail)
                if a.field == "status" and a.applied and a.to_value in contract_values
            ),
            None,
        )
    if last is None or (last == LoanStatus.REQUESTED and loan.status in FINAL):
        return LoanStatus.INVALID
    return last


def loan_accounting(loan: Loan, *, audit_trail: list[AuditEntry] | None = None) -> LoanAccounting:
    outcome = contract_outcome(loan, audit_trail=audit_trail)
    flows = loan_flows(
        flavour=loan.contract_flavour,
        outcome=outcome,
        amount_wei=int(loan.amount_wei),
        bond_wei=int(loan.bond_wei or 0),
    )
    return LoanAccounting(outcome, flows)


def loan_accounting_check(*, loan_id: int) -> int:
    """Alert while the contract keeps money a party is owed for this loan (the processing fee
    of a request never offered is shown, not alerted: both contracts keep it by design).
    Returns the stranded wei."""
    loan = Loan.objects.get(pk=loan_id)
    accounting = loan_accounting(loan)
    stranded = [f for f in accounting.flows if f.stranded_wei > 0]
    if accounting.outcome == LoanStatus.INVALID:
        stranded = []
    key = f"loan:{loan.pk}:money_stranded"
    if not stranded:
        alert_resolve(key=key)
        return 0
    total = sum(f.stranded_wei for f in stranded)
    alert_raise(
        key=key,
        severity="critical",
        title=(
            f"loan {loan.onchain_id}: {total} wei the {stranded[0].party} is owed stayed in the "
            f"loan contract ({loan.contract_flavour}); see the runbook, 'Money stranded in the "
            "loan contract'"
        ),
        details={
            "outcome": accounting.outcome,
            "stranded_wei": str(total),
            "flows": [
                {
                    "party": f.party,
                    "item": f.item,
                    "owed_wei": str(f.owed_wei),
                    "paid_wei": str(f.paid_wei),
                }
                for f in stranded
            ],
        },
        loan_ref=loan.pk,
    )
    return total
