"""Bad input is a 4xx with a reason, never a 500: one test per class (Unicode digits,
oversized numbers, oversized bodies, NUL bytes, amount bounds), plus the throttles on failed
authentication and /metrics, and what a borrower's timeline says about operators."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from btcloan.api.services import access_token_issue
from btcloan.api.siwe import SiweFormatError, parse_message
from btcloan.roles import VIEWER, user_role_set
from loans.models import AuditAction, AuditCause
from loans.serializers import MAX_LOAN_WEI
from loans.services.lifecycle import loan_record
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db

SIWE = """localhost:8000 wants you to sign in with your Ethereum account:
0x{address}

Sign in to the btcloan lending desk.

URI: http://localhost:8000
Version: 1
Chain ID: {chain_id}
Nonce: abcdefgh12345678
Issued At: 2026-01-01T00:00:00Z"""
ADDRESS = "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
QUOTE = {"borrower_btc_pubkey": "ab" * 32, "preimage_hash_borrower": "cd" * 32}


def _error(response: Any, status_code: int) -> dict[str, Any]:
    assert response.status_code == status_code, response.content[:500]
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["message"]
    return dict(body["error"])


@pytest.fixture
def own_loan(wallet: Any) -> Any:
    return loan_factory(borrower_address=wallet.address)


# --- Unicode digits ----------------------------------------------------------------------------
@pytest.mark.parametrize("digits", ["²", "١٢", "\uff13\uff11\uff13\uff13\uff17", "31337\u00b2"])
def test_unicode_digits_in_siwe_chain_id_are_a_format_error(digits: str) -> None:
    assert digits[0].isdigit()  # what fooled str.isdigit() before int() refused it
    with pytest.raises(SiweFormatError, match="Chain ID is not a number"):
        parse_message(SIWE.format(address=ADDRESS, chain_id=digits))


def test_unicode_digits_in_a_siwe_login_are_a_400(api_client: APIClient) -> None:
    message = SIWE.format(address=ADDRESS, chain_id="²")
    response = api_client.post(
        "/api/v1/auth/login", {"message": message, "signature": "0x" + "00" * 65}, format="json"
    )
    assert 400 <= response.status_code < 500, response.content
    assert "Chain ID" in response.json()["error"]["message"]


@pytest.mark.parametrize("spend", ["release-tx", "exit-tx"])
@pytest.mark.parametrize("feerate", ["²", "٣", "1²"])
def test_unicode_digits_in_a_feerate_are_a_400(
    borrower_client: APIClient, own_loan: Any, spend: str, feerate: str
) -> None:
    url = f"/api/v1/loans/{own_loan.pk}/{spend}?address=x&feerate={feerate}"
    error = _error(borrower_client.get(url), 400)
    assert "feerate" in error["details"]


# --- Oversized numbers -------------------------------------------------------------------------
@pytest.mark.parametrize("spend", ["release-tx", "exit-tx"])
@pytest.mark.parametrize("feerate", ["9" * 5000, "100001", "0"])
def test_oversized_or_zero_feerates_are_a_400(
    borrower_client: APIClient, own_loan: Any, spend: str, feerate: str
) -> None:
    url = f"/api/v1/loans/{own_loan.pk}/{spend}?address=x&feerate={feerate}"
    error = _error(borrower_client.get(url), 400)
    assert "from 1 to 100000" in error["message"]


def test_an_oversized_siwe_chain_id_is_a_format_error() -> None:
    with pytest.raises(SiweFormatError):
        parse_message(SIWE.format(address=ADDRESS, chain_id="9" * 5000))


@pytest.mark.parametrize("page", ["9" * 5000, "²"])
def test_oversized_page_numbers_are_a_4xx(operator_client: APIClient, page: str) -> None:
    response = operator_client.get(f"/api/v1/loans/?page={page}&page_size={page}")
    assert 400 <= response.status_code < 500


# --- Amount bounds -----------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [str(10**77), str(MAX_LOAN_WEI + 10**10), "9" * 58 + "0" * 10])
def test_a_quote_above_any_loan_the_contract_can_hold_is_a_400(
    api_client: APIClient, amount: str
) -> None:
    response = api_client.post(
        "/api/v1/escrow/quote", {**QUOTE, "amount_wei": amount}, format="json"
    )
    error = _error(response, 400)
    (reason,) = error["details"]["amount_wei"]
    assert "above any loan the contract can hold" in reason["message"]


def test_the_largest_possible_amount_passes_validation() -> None:
    from loans.serializers import QuoteInSerializer

    given = QuoteInSerializer(data={**QUOTE, "amount_wei": str(MAX_LOAN_WEI)})
    assert given.is_valid(), given.errors


# --- Oversized bodies --------------------------------------------------------------------------
BIG = 3 * 1024 * 1024  # over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB)


@pytest.mark.parametrize(
    "path", ["/api/v1/auth/login", "/api/v1/auth/nonce", "/api/v1/escrow/quote"]
)
def test_an_oversized_json_body_is_a_413_even_unauthenticated(
    api_client: APIClient, path: str
) -> None:
    body = json.dumps({"message": "x" * BIG, "signature": "0x"})
    response = api_client.post(path, body, content_type="application/json")
    error = _error(response, 413)
    assert error["code"] == "request_too_large"


def test_an_oversized_body_to_the_admin_is_a_413() -> None:
    response = Client().post(
        "/admin/login/", "u=" + "x" * BIG, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413


def test_a_body_just_under_the_limit_is_read(api_client: APIClient, settings: Any) -> None:
    body = json.dumps({"address": "not an address", "pad": "x" * (1024 * 1024)})
    response = api_client.post("/api/v1/auth/nonce", body, content_type="application/json")
    assert response.status_code == 400  # read and refused for its content, not its size


# --- NUL bytes ---------------------------------------------------------------------------------
@pytest.fixture
def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("root", password="a long passphrase 1")
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "query",
    ["q=%00", "status=%00", "status__exact=a%00b", "%00=1", "o=%00", "bitcoin_stage=\x00"],
)
def test_a_nul_byte_in_an_admin_filter_is_a_400(admin_client: Client, query: str) -> None:
    response = admin_client.get(f"/admin/loans/loan/?{query}")
    assert response.status_code == 400
    assert b"NUL" in response.content


def test_a_nul_byte_in_an_api_filter_or_body_is_a_400(
    operator_client: APIClient, api_client: APIClient
) -> None:
    error = _error(operator_client.get("/api/v1/loans/?status=%00"), 400)
    assert "NUL" in error["message"]
    response = api_client.post("/api/v1/auth/nonce", {"address": "0x\x00"}, format="json")
    assert response.status_code == 400


# --- Throttles ---------------------------------------------------------------------------------
def _rates(settings: Any, **rates: str) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            **rates,
        },
    }


def test_failed_authentication_is_throttled_per_address(settings: Any) -> None:
    from django.core.cache import cache

    cache.clear()
    _rates(settings, auth_failure="3/minute")
    user = get_user_model().objects.create_user(username="vic", is_staff=True)
    user_role_set(user=user, role=VIEWER)
    good = access_token_issue(user=user).token
    attacker = APIClient(REMOTE_ADDR="203.0.113.5")
    for guess in range(3):
        attacker.credentials(HTTP_AUTHORIZATION=f"Bearer btl_wrong{guess:030d}")
        assert attacker.get("/api/v1/loans/").status_code == 401
    attacker.credentials(HTTP_AUTHORIZATION="Api-Key btk_wrongwrongwrongwrongwrong")
    assert _error(attacker.get("/api/v1/loans/"), 429)["code"] == "throttled"
    # Past the budget even a right credential is refused from there...
    attacker.credentials(HTTP_AUTHORIZATION=f"Bearer {good}")
    assert attacker.get("/api/v1/loans/").status_code == 429
    # ...and from elsewhere it works.
    elsewhere = APIClient(REMOTE_ADDR="198.51.100.8")
    elsewhere.credentials(HTTP_AUTHORIZATION=f"Bearer {good}")
    assert elsewhere.get("/api/v1/loans/").status_code == 200


def test_metrics_are_throttled(settings: Any, operator_client: APIClient) -> None:
    from django.core.cache import cache

    cache.clear()
    _rates(settings, metrics="2/minute")
    assert operator_client.get("/metrics").status_code == 200
    assert operator_client.get("/metrics").status_code == 200
    assert operator_client.get("/metrics").status_code == 429


# --- Borrowers never see an operator's name ------------------------------------------------------
def test_a_borrower_sees_operator_not_a_username(
    borrower_client: APIClient, operator_client: APIClient, own_loan: Any
) -> None:
    loan_record(
        loan_id=own_loan.pk,
        action=AuditAction.OPERATOR_RAN_WATCHDOG,
        cause=AuditCause.OPERATOR,
        cause_ref="alice.the.operator",
    )
    seen = borrower_client.get(f"/api/v1/loans/{own_loan.pk}/").content.decode()
    assert "alice.the.operator" not in seen
    (entry,) = [e for e in json.loads(seen)["timeline"] if e.get("what") == "operator_ran_watchdog"]
    assert entry["ref"] == "operator"
    assert (
        "alice.the.operator"
        in operator_client.get(f"/api/v1/loans/{own_loan.pk}/").content.decode()
    )
