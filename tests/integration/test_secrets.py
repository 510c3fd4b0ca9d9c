"""No secret leaves the desk: not the lender's keys, not P_L before it is revealed on chain,
not a token or an API key. A real loan is driven to a held repayment acceptance (P_L exists,
is used nowhere yet), then every API answer, every admin page and every log line is searched.
"""

from __future__ import annotations

import logging

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from btcloan.api.services import access_token_issue, api_key_create
from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from loans.models import LoanStatus
from loans.services.preimages import lender_preimage_reveal
from tests.integration.conftest import LENDER_BTC_SECRET, Desk
from tests.integration.test_lifecycles import activated

pytestmark = [pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


def _forms(secret: str) -> set[str]:
    """A secret as it could be written: with or without 0x, upper or lower case."""
    bare = secret.lower().removeprefix("0x")
    return {bare, bare.upper(), "0x" + bare}


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if any(f in text for f in _forms(value))]


def test_no_secret_in_api_answers_admin_pages_or_logs(desk: Desk, settings, caplog):
    caplog.set_level(logging.DEBUG)
    settings.LENDER_ACTIONS_REQUIRING_APPROVAL = ["accept_repayment"]
    borrower = desk.borrower()
    onchain_id = activated(desk, borrower)
    borrower.actions.attempt_repayment(onchain_id)
    desk.until(lambda: desk.loan(onchain_id).status == LoanStatus.REPAYMENT_IN_PROGRESS)
    loan = desk.loan(onchain_id)
    assert loan.preimage_lender_revealed_at is None

    operator = get_user_model().objects.create_superuser("root", "r@example.com", "pw-0123456789")
    token = access_token_issue(user=operator).token
    _name, api_key = api_key_create(name="svc", role="operator")
    # Read P_L for the comparison only (reading it records nothing).
    preimage_lender = lender_preimage_reveal(loan_id=loan.pk).hex()
    secrets = {
        "lender BTC key": LENDER_BTC_SECRET,
        "lender EVM key": ANVIL_DEFAULT_KEYS[0],
        "P_L": preimage_lender,
        "API token": token,
        "API key": api_key,
    }

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    pages = {}
    for path in (
        "/api/v1/loans/",
        f"/api/v1/loans/{loan.pk}/",
        f"/api/v1/loans/{loan.pk}/collateral-tx",
        f"/api/v1/loans/{loan.pk}/release-tx?address={borrower.payout_address}&feerate=2",
        "/api/v1/parameters",
        "/api/v1/health",
        "/api/v1/auth/me",
        "/api/v1/loans/999999/",
    ):
        response = api.get(path)
        assert response.status_code < 500, (path, response.content[:300])
        pages[path] = response.content.decode()

    browser = Client()
    browser.force_login(operator)
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        response = browser.get(changelist)
        assert response.status_code == 200, changelist
        pages[changelist] = response.content.decode()
        for pk in model._default_manager.values_list("pk", flat=True)[:20]:
            change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk])
            response = browser.get(change)
            assert response.status_code == 200, change
            pages[change] = response.content.decode()
        del model_admin

    leaked = {page: _leaks(text, secrets) for page, text in pages.items()}
    assert {page: names for page, names in leaked.items() if names} == {}
    assert len(pages) > 30  # the sweep really covered the admin
    log_text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records
    assert _leaks(log_text, secrets) == []
