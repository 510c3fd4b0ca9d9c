"""Each loan's EVM accounting by flavour and outcome, the stranded-money alert, and the lender's
housekeeping (deleteCompletedLoan) once a seed-flavour loan is closed on both chains."""

from __future__ import annotations

from decimal import Decimal

import pytest

from btcloan.models import Alert
from loans.accounting import PROCESSING_FEE_WEI, loan_flows, stranded_wei
from loans.models import AuditCause, BitcoinStage, ContractFlavour, LoanStatus
from loans.services.accounting import loan_accounting, loan_accounting_check
from loans.services.lifecycle import loan_transition
from loans.services.settlement import loan_close_if_settled

A = 10**16
B = A // 10
F = PROCESSING_FEE_WEI


@pytest.mark.parametrize(
    ("flavour", "outcome", "stranded"),
    [
        (ContractFlavour.BTCLOAN, LoanStatus.REFUNDED_TO_LENDER, 0),
        (ContractFlavour.SEED, LoanStatus.REFUNDED_TO_LENDER, A + B + F),
        (ContractFlavour.BTCLOAN, LoanStatus.REPAID, 0),
        (ContractFlavour.SEED, LoanStatus.REPAID, B),
        (ContractFlavour.SEED, LoanStatus.DEFAULTED, 0),
        (ContractFlavour.BTCLOAN, LoanStatus.REFUNDED_TO_BORROWER, 0),
        (ContractFlavour.SEED, LoanStatus.INVALID, F),
        (ContractFlavour.BTCLOAN, LoanStatus.ACTIVE, 0),
    ],
)
def test_what_each_contract_leaves_behind(flavour, outcome, stranded):
    flows = loan_flows(flavour=flavour, outcome=outcome, amount_wei=A, bond_wei=B)
    assert stranded_wei(flows) == stranded
    for flow in flows:
        assert 0 <= flow.paid_wei <= flow.owed_wei


def test_a_repaid_seed_loan_shows_the_bond_kept_and_alerts(db, make_loan):
    loan = make_loan(
        contract_flavour=ContractFlavour.SEED, status=LoanStatus.REPAID, bond_wei=Decimal(B)
    )
    accounting = loan_accounting(loan)
    assert accounting.outcome == LoanStatus.REPAID
    lender = next(f for f in accounting.flows if f.party == "lender")
    assert (lender.owed_wei, lender.paid_wei) == (A + B, A)
    assert loan_accounting_check(loan_id=loan.pk) == B
    alert = Alert.objects.get(key=f"loan:{loan.pk}:money_stranded", resolved_at__isnull=True)
    assert alert.severity == "critical"
    assert "runbook" in alert.title
    assert alert.details["stranded_wei"] == str(B)


def test_ours_repaid_raises_nothing(db, make_loan):
    loan = make_loan(status=LoanStatus.REPAID, bond_wei=Decimal(B))
    assert loan_accounting_check(loan_id=loan.pk) == 0
    assert not Alert.objects.filter(key=f"loan:{loan.pk}:money_stranded").exists()


def _close_repaid(loan) -> None:
    loan_transition(loan_id=loan.pk, field="status", to=LoanStatus.REPAID, cause=AuditCause.BACKEND)
    assert loan_close_if_settled(loan_id=loan.pk)


@pytest.mark.parametrize(
    ("flavour", "deleted"), [(ContractFlavour.SEED, True), (ContractFlavour.BTCLOAN, False)]
)
def test_a_closed_seed_loan_is_deleted_on_chain_by_the_lender(
    db, make_loan, django_capture_on_commit_callbacks, monkeypatch, flavour, deleted
):
    from loans import tasks

    sent: list[int] = []
    monkeypatch.setattr(tasks.delete_completed_loan, "delay", sent.append)
    loan = make_loan(
        contract_flavour=flavour,
        status=LoanStatus.REPAYMENT_IN_PROGRESS,
        bitcoin_stage=BitcoinStage.RELEASED,
        bond_wei=Decimal(B),
    )
    with django_capture_on_commit_callbacks(execute=True):
        _close_repaid(loan)
    loan.refresh_from_db()
    assert loan.status == LoanStatus.CLOSED
    # Closed, its outcome on the contract is still known to the accounting.
    assert loan_accounting(loan).outcome == LoanStatus.REPAID
    assert sent == ([loan.pk] if deleted else [])
