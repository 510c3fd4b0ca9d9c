"""Every error has one shape, {"error": {"code", "message", "details"}}, and leaks nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from btcloan.alerts.services import alert_raise

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh_throttles() -> None:
    """Throttle counters live in the (Redis) cache, which outlives a run."""
    cache.clear()


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    return dict(body["error"])


def test_validation_errors_name_each_field_and_reason(api_client: APIClient) -> None:
    error = _error(
        api_client.post("/api/test/echo", {"amount_sats": 0, "address": "x" * 11}, format="json"),
        400,
    )
    assert error["code"] == "invalid"
    details = error["details"]
    assert details["amount_sats"][0]["code"] == "min_value"
    assert details["address"][0]["code"] == "max_length"
    assert "amount_sats" in error["message"] or "address" in error["message"]

    missing = _error(api_client.post("/api/test/echo", {}, format="json"), 400)
    assert {"amount_sats", "address"} <= set(missing["details"])
    assert missing["details"]["address"][0]["code"] == "required"


def test_malformed_json_and_wrong_media_type(api_client: APIClient) -> None:
    bad_json = api_client.generic(
        "POST", "/api/test/echo", "{not json", content_type="application/json"
    )
    assert _error(bad_json, 400)["code"] == "parse_error"
    form = api_client.post("/api/test/echo", {"amount_sats": 1})  # multipart
    assert _error(form, 415)["code"] == "unsupported_media_type"


def test_not_found_method_not_allowed_and_auth_errors(api_client: APIClient) -> None:
    assert _error(api_client.get("/api/v1/no-such-thing"), 404)["code"] == "not_found"
    assert _error(api_client.get("/api/v1/auth/login"), 405)["code"] == "method_not_allowed"
    assert _error(api_client.get("/api/test/operator-only"), 401)["code"] == "not_authenticated"
    unauthorised = api_client.get(
        "/api/test/operator-only", HTTP_AUTHORIZATION="Bearer btl_nonsense-token-value"
    )
    assert _error(unauthorised, 401)["code"] == "authentication_failed"
    malformed = api_client.get("/api/test/operator-only", HTTP_AUTHORIZATION="Bearer a b")
    assert _error(malformed, 401)["code"] == "authentication_failed"


def test_an_unexpected_exception_is_a_generic_500_without_the_secret(settings: Any) -> None:
    client = APIClient(raise_request_exception=False)
    error = _error(client.get("/api/test/explodes"), 500)
    assert error["code"] == "server_error"
    assert "RuntimeError" not in error["message"]
    secret = settings.LENDER_EVM_PRIVATE_KEY
    response = client.get("/api/test/explodes")
    assert secret not in response.content.decode()
    assert secret[2:] not in response.content.decode()


def test_django_level_errors_under_api_are_json() -> None:
    client = Client(raise_request_exception=False)
    response = client.get("/api/test/django-explodes")
    assert _error(response, 500)["code"] == "server_error"
    assert "plain Django view" not in response.content.decode()
    not_found = client.get("/api/nothing/here")
    assert _error(not_found, 404)["code"] == "not_found"
    # Outside /api/ Django's own pages remain.
    assert client.get("/nothing/here").status_code == 404
    assert "error" not in client.get("/nothing/here").content.decode()[:20]


@pytest.mark.usefixtures("fresh_throttles")
def test_throttling_per_ip_answers_429_with_the_envelope(settings: Any) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"ip": "3/minute", "user": None, "auth": None},
    }
    client = APIClient(REMOTE_ADDR="198.51.100.7")
    statuses = [client.post("/api/test/echo", {}, format="json").status_code for _ in range(2)]
    statuses.append(client.get("/api/v1/auth/login").status_code)
    assert statuses == [400, 400, 405]
    # The 4th request from that address is throttled, whatever the endpoint.
    limited = client.post("/api/test/echo", {}, format="json")
    error = _error(limited, 429)
    assert error["code"] == "throttled"
    assert error["details"]["retry_after_seconds"] >= 1
    assert int(limited["Retry-After"]) >= 1
    # Another address is unaffected.
    other = APIClient(REMOTE_ADDR="198.51.100.8")
    assert other.post("/api/test/echo", {}, format="json").status_code == 400


@pytest.mark.usefixtures("fresh_throttles")
def test_throttling_per_user_and_on_sign_in(settings: Any, operator_client: APIClient) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"ip": None, "user": "2/minute", "auth": "2/minute"},
    }
    operator_client.defaults["REMOTE_ADDR"] = "198.51.100.20"
    assert operator_client.get("/api/v1/auth/me").status_code == 200
    operator_client.defaults["REMOTE_ADDR"] = "198.51.100.21"  # the user moves: still counted
    assert operator_client.get("/api/v1/auth/me").status_code == 200
    assert _error(operator_client.get("/api/v1/auth/me"), 429)["code"] == "throttled"

    anonymous = APIClient(REMOTE_ADDR="198.51.100.30")
    address = {"address": "0x" + "ab" * 20}
    for _ in range(2):
        assert anonymous.post("/api/v1/auth/nonce", address, format="json").status_code == 200
    throttled = anonymous.post("/api/v1/auth/nonce", address, format="json")
    assert _error(throttled, 429)["code"] == "throttled"


def test_pagination_caps_the_page_size_and_filters(
    settings: Any, operator_client: APIClient
) -> None:
    settings.API_MAX_PAGE_SIZE = 3
    for n in range(5):
        alert_raise(key=f"k{n}", severity="warning" if n % 2 else "critical", title=f"t{n}")
    page = operator_client.get("/api/test/alerts?page_size=100").json()
    assert page["count"] == 5
    assert len(page["results"]) == 3
    assert page["next"] is not None
    second = operator_client.get("/api/test/alerts?page_size=100&page=2").json()
    assert [a["key"] for a in second["results"]] == ["k3", "k4"]
    filtered = operator_client.get("/api/test/alerts?severity=warning").json()
    assert [a["key"] for a in filtered["results"]] == ["k1", "k3"]
    bad_filter = operator_client.get("/api/test/alerts?severity=apocalyptic")
    assert "severity" in _error(bad_filter, 400)["details"]
    assert _error(operator_client.get("/api/test/alerts?page=99"), 404)["code"] == "not_found"
    # get_object_or_404 in a view: the envelope, and no model name.
    missing = _error(operator_client.get("/api/test/alerts/999999"), 404)
    assert missing == {"code": "not_found", "message": "Not found.", "details": {}}
