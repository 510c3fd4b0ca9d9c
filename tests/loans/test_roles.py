"""Operator roles (btcloan.roles): groups created by the data migration, enforced by real
permissions in the admin and the API; `is_staff` alone grants nothing. Admin login lockout,
password validators, and tokens that die with a password change or a deactivation."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from btcloan.api.services import access_token_issue
from btcloan.models import AccessToken
from btcloan.roles import ADMIN, OPERATOR, VIEWER, user_role_set
from loans.models import LoanStatus, LoanWorkflow, WorkflowStatus, WorkflowType
from loans.services.workflows import workflow_fail, workflow_start

pytestmark = pytest.mark.django_db

LOANS = "/admin/loans/loan/"
TOKENS = "/admin/btcloan/accesstoken/"
PASSWORD = "a-long-enough passphrase 42"


def _staff(username: str, role: str | None) -> Any:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=True)
    if role is not None:
        user_role_set(user=user, role=role)
    return user


def _admin_client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_issue(user=user).token}")
    return client


def test_the_migration_created_the_three_roles() -> None:
    perms = {
        group.name: {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        for group in Group.objects.prefetch_related("permissions__content_type")
    }
    assert {VIEWER, OPERATOR, ADMIN} <= set(perms)
    assert {"loans.view_loan", "bitcoin.view_bitcointransaction"} <= perms[VIEWER]
    writes = ("add_", "change_", "delete_")
    assert not any(p.split(".")[1].startswith(writes) for p in perms[VIEWER])
    actions = {
        "btcloan.approve_lender_action",
        "btcloan.retry_work",
        "btcloan.rescan_chain",
        "btcloan.rebroadcast_transaction",
    }
    assert actions.isdisjoint(perms[VIEWER])
    assert actions | perms[VIEWER] <= perms[OPERATOR]
    assert "auth.change_user" not in perms[OPERATOR]
    assert "btcloan.change_accesstoken" not in perms[OPERATOR]
    assert perms[OPERATOR] | {"auth.change_user", "btcloan.change_apikey"} <= perms[ADMIN]


def test_staff_without_a_role_sees_nothing(make_loan: Any) -> None:
    make_loan()
    nobody = _staff("nobody", None)
    assert _admin_client(nobody).get(LOANS).status_code == 403
    assert _admin_client(nobody).get(TOKENS).status_code == 403
    response = _api(nobody).get("/api/v1/loans/")
    assert response.status_code == 403, response.content


def test_a_viewer_reads_but_cannot_act(make_loan: Any) -> None:
    loan = make_loan(status=LoanStatus.ACTIVE)
    workflow = workflow_start(loan_id=loan.pk, type=WorkflowType.ESCROW_SETUP, step="offer")
    workflow_fail(workflow_id=workflow.pk, step="offer", error="node down")
    viewer = _admin_client(_staff("vera", VIEWER))
    page = viewer.get(LOANS)
    assert page.status_code == 200
    html = page.content.decode()
    assert str(loan.borrower_address) in html
    assert "retry_failed_workflows" not in html
    viewer.post(LOANS, {"action": "retry_failed_workflows", "_selected_action": [loan.pk]})
    assert LoanWorkflow.objects.get(pk=workflow.pk).status == WorkflowStatus.FAILED
    assert viewer.get(f"{LOANS}{loan.pk}/change/").status_code == 200  # the read-only page
    assert viewer.post(f"{LOANS}{loan.pk}/change/", {}).status_code == 403
    assert viewer.get("/admin/auth/user/").status_code == 403
    assert _api(_staff("vera-api", VIEWER)).get("/api/v1/loans/").status_code == 200


def test_an_operator_acts_but_cannot_manage_users_or_tokens(make_loan: Any) -> None:
    loan = make_loan(status=LoanStatus.ACTIVE)
    workflow = workflow_start(loan_id=loan.pk, type=WorkflowType.ESCROW_SETUP, step="offer")
    workflow_fail(workflow_id=workflow.pk, step="offer", error="node down")
    operator = _admin_client(_staff("otto", OPERATOR))
    html = operator.get(LOANS).content.decode()
    for action in ("approve_held_actions", "retry_failed_workflows", "run_watchdog"):
        assert action in html, action
    operator.post(LOANS, {"action": "retry_failed_workflows", "_selected_action": [loan.pk]})
    assert LoanWorkflow.objects.get(pk=workflow.pk).status == WorkflowStatus.PENDING

    # Another user's token: an operator cannot revoke it (that is an admin's), an admin can.
    victim = access_token_issue(user=_staff("victim", VIEWER))
    token = AccessToken.objects.get(user__username="victim")
    revoke = {"action": "revoke", "_selected_action": [token.pk]}
    assert operator.get("/admin/auth/user/").status_code == 403
    refused = operator.post(TOKENS, revoke)  # the action is not offered to an operator
    assert "revoke" not in refused.content.decode().split('name="action"', 1)[-1][:2000]
    token.refresh_from_db()
    assert token.revoked_at is None
    admin = _admin_client(_staff("ada", ADMIN))
    assert admin.get("/admin/auth/user/").status_code == 200
    assert admin.post(TOKENS, revoke).status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert victim.token not in admin.get(TOKENS).content.decode()


def test_tokens_die_with_a_password_change_and_a_deactivation() -> None:
    user = _staff("pat", VIEWER)
    first = _api(user)
    assert first.get("/api/v1/auth/me").status_code == 200
    user.set_password("another long passphrase 43")
    user.save()
    assert first.get("/api/v1/auth/me").status_code == 401
    assert AccessToken.objects.get(user=user).revoked_at is not None

    second = _api(user)
    assert second.get("/api/v1/auth/me").status_code == 200
    user.is_active = False
    user.save()
    assert second.get("/api/v1/auth/me").status_code == 401
    assert AccessToken.objects.filter(user=user, revoked_at__isnull=True).count() == 0


def test_password_validators_refuse_weak_passwords() -> None:
    user = get_user_model()(username="weakling")
    for weak in ("short1", "password1234", "123456789012", "weakling2026"):
        with pytest.raises(ValidationError):
            validate_password(weak, user)
    validate_password(PASSWORD, user)


def test_admin_login_locks_out_after_repeated_failures(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 5
    _staff("lou", OPERATOR)
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(5):
        client.post("/admin/login/", {"username": "lou", "password": "wrong password!!"})
    # The right password no longer works from there, and the API's operator sign-in shares the
    # lockout.
    locked = client.post("/admin/login/", {"username": "lou", "password": PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    api = APIClient(REMOTE_ADDR="203.0.113.9")
    refused = api.post(
        "/api/v1/auth/operator-login", {"username": "lou", "password": PASSWORD}, format="json"
    )
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"]["code"] == "locked_out"
    # Another address is not locked out.
    other = Client(REMOTE_ADDR="198.51.100.7")
    response = other.post("/admin/login/", {"username": "lou", "password": PASSWORD})
    assert response.status_code == 302
