"""The operators' admin: the loan page shows its timeline and no secret; held lender actions
are approved from it, failed workflows retried, and each operator action is audited."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from chainwatch.models import EvmTransaction
from loans.models import (
    ApprovalStatus,
    AuditCause,
    AuditEntry,
    LenderApproval,
    LoanStatus,
    WorkflowType,
)
from loans.policy import LenderAction
from loans.services.lender import lender_action_request
from loans.services.preimages import lender_preimage_ensure
from loans.services.workflows import workflow_fail, workflow_start

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/loans/loan/"


@pytest.fixture
def operator(client):
    user = get_user_model().objects.create_superuser("alice", "alice@example.com", "pw-123456789")
    client.force_login(user)
    return client


@pytest.fixture
def contracts_configured(settings):
    settings.LOAN_CONTRACT_ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    settings.ETHERSWAP_CONTRACT_ADDRESS = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
    settings.DEPLOYMENT_FILE = settings.VAR_DIR / "no-deployment.json"


def test_the_loan_page_shows_the_timeline_and_never_the_lender_preimage(operator, make_loan):
    loan = make_loan(status=LoanStatus.OFFERED)
    lender_preimage_ensure(loan_id=loan.pk)
    loan.refresh_from_db()
    page = operator.get(f"{CHANGELIST}{loan.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "btcloan-timeline" in html
    assert "lender_preimage_generated" in html
    assert "borrower: accept the offer before it expires" in html
    assert "preimage_lender_encrypted" not in html
    assert bytes(loan.preimage_lender_encrypted).decode() not in html


def test_a_held_action_waits_for_approval_and_is_sent_once_approved(
    operator, make_loan, settings, contracts_configured
):
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["accept_repayment"]
    loan = make_loan(status=LoanStatus.REPAYMENT_IN_PROGRESS)
    lender_preimage_ensure(loan_id=loan.pk)
    outcome = lender_action_request(
        loan_id=loan.pk, action=LenderAction.ACCEPT_REPAYMENT, cause=AuditCause.BACKEND
    )
    assert outcome == "held"
    assert not EvmTransaction.objects.exists()
    response = operator.post(
        CHANGELIST, {"action": "approve_held_actions", "_selected_action": [loan.pk]}
    )
    assert response.status_code == 302
    approval = LenderApproval.objects.get(loan=loan)
    assert approval.status == ApprovalStatus.APPROVED
    assert approval.decided_by == "alice"
    (sent,) = EvmTransaction.objects.all()
    assert sent.function == "acceptLoanRepayment"
    assert AuditEntry.objects.get(loan=loan, action="lender_action_approved").cause_ref == "alice"


def test_failed_workflows_are_retried_from_the_admin(operator, make_loan):
    loan = make_loan()
    workflow = workflow_start(loan_id=loan.pk, type=WorkflowType.ESCROW_SETUP, step="offer")
    workflow_fail(workflow_id=workflow.pk, step="offer", error="node down")
    operator.post(CHANGELIST, {"action": "retry_failed_workflows", "_selected_action": [loan.pk]})
    workflow.refresh_from_db()
    assert workflow.status == "pending"
    assert workflow.retry_count == 1
    assert AuditEntry.objects.filter(loan=loan, action="workflow_retried").exists()


def test_loans_cannot_be_added_or_deleted_in_the_admin(operator, make_loan):
    loan = make_loan()
    assert operator.get(f"{CHANGELIST}add/").status_code == 403
    assert operator.get(f"{CHANGELIST}{loan.pk}/delete/").status_code == 403
