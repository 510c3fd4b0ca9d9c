"""Run in a subprocess on the embedded defaults (SQLite, no Redis: what `make demo` uses):
migrate, make a loan with a story, and print what the loan list and detail answer, as JSON.
tests/test_foundation.py reads it."""

from __future__ import annotations

import json

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from btcloan.api.services import access_token_issue  # noqa: E402
from btcloan.roles import OPERATOR, user_role_set  # noqa: E402
from chainwatch.models import ChainCursor  # noqa: E402
from loans.models import AuditCause, AuditEntry, LoanWorkflow, WorkflowType  # noqa: E402
from tests.loans.conftest import loan_factory  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0)
    loan = loan_factory()
    AuditEntry.objects.create(loan=loan, cause=AuditCause.BACKEND, action="loan_requested")
    LoanWorkflow.objects.create(loan=loan, type=WorkflowType.REPAYMENT)
    ChainCursor.objects.create(chain_id=loan.chain_id, block_number=50, block_hash="0x" + "1" * 64)
    user = get_user_model().objects.create_user(username="op", is_staff=True)
    user_role_set(user=user, role=OPERATOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_issue(user=user).token}")
    detail = client.get(f"/api/v1/loans/{loan.pk}/", HTTP_HOST="localhost")
    listing = client.get("/api/v1/loans/", HTTP_HOST="localhost")
    print(json.dumps({"detail": [detail.status_code, detail.json()],
                      "list": [listing.status_code, listing.json()]}))  # fmt: skip


if __name__ == "__main__":
    main()
