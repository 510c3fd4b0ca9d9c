"""A browser dApp on an origin named in CORS_ALLOWED_ORIGINS signs in (SIWE) and reads its
loans: preflights answered, every answer carries its origin. Any other origin gets no CORS
header at all, so the browser keeps the answers from its scripts."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from tests.api.conftest import sign
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db

DAPP = "https://dapp.example"
OTHER = "https://evil.example"
ACAO = "access-control-allow-origin"


@pytest.fixture(autouse=True)
def _origins(settings: Any) -> None:
    settings.CORS_ALLOWED_ORIGINS = [DAPP, "http://localhost:3000"]


def preflight(client: APIClient, path: str, origin: str, method: str, headers: str) -> Any:
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS=headers,
    )


def test_a_named_origin_signs_in_and_reads_its_loans(wallet: LocalAccount) -> None:
    mine = loan_factory(borrower_address=wallet.address)
    loan_factory()  # someone else's
    client = APIClient()

    answer = preflight(client, "/api/v1/auth/nonce", DAPP, "POST", "content-type")
    assert answer.status_code == 200
    assert answer[ACAO] == DAPP
    assert "POST" in answer["access-control-allow-methods"]
    assert "content-type" in answer["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in answer  # bearer tokens, no cookies

    nonce = client.post(
        "/api/v1/auth/nonce", {"address": wallet.address}, format="json", HTTP_ORIGIN=DAPP
    )
    assert nonce.status_code == 200
    assert nonce[ACAO] == DAPP
    message = nonce.json()["message"]
    login = client.post(
        "/api/v1/auth/login",
        {"message": message, "signature": sign(wallet, message)},
        format="json",
        HTTP_ORIGIN=DAPP,
    )
    assert login.status_code == 200
    assert login[ACAO] == DAPP
    token = login.json()["token"]

    answer = preflight(client, "/api/v1/loans/", DAPP, "GET", "authorization")
    assert answer.status_code == 200
    assert "authorization" in answer["access-control-allow-headers"]
    loans = client.get("/api/v1/loans/", HTTP_ORIGIN=DAPP, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert loans.status_code == 200
    assert loans[ACAO] == DAPP
    assert [row["id"] for row in loans.json()["results"]] == [mine.pk]
    # An error answer carries the header too, so the dApp can read the reason.
    denied = client.get("/api/v1/loans/", HTTP_ORIGIN=DAPP)
    assert denied.status_code == 401
    assert denied[ACAO] == DAPP


def test_another_origin_gets_no_cors_headers(wallet: LocalAccount) -> None:
    client = APIClient()
    answer = preflight(client, "/api/v1/auth/nonce", OTHER, "POST", "content-type")
    assert ACAO not in answer
    assert "access-control-allow-methods" not in answer
    nonce = client.post(
        "/api/v1/auth/nonce", {"address": wallet.address}, format="json", HTTP_ORIGIN=OTHER
    )
    assert ACAO not in nonce
    # A look-alike of a named origin is another origin.
    assert ACAO not in client.get("/api/v1/parameters", HTTP_ORIGIN=DAPP + ".attacker.example")
    assert ACAO not in client.get("/api/v1/parameters", HTTP_ORIGIN="http://dapp.example")


def test_only_the_api_answers_cross_origin(admin_client: Any) -> None:
    assert ACAO not in admin_client.get("/admin/login/", HTTP_ORIGIN=DAPP)
    assert ACAO not in admin_client.get("/metrics", HTTP_ORIGIN=DAPP)
