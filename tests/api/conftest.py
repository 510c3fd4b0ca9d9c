"""API fixtures: a wallet with a real secp256k1 key, signed-in clients for each role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from btcloan.api.services import access_token_issue, api_key_create
from btcloan.roles import OPERATOR, user_role_set


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def wallet() -> LocalAccount:
    return Account.create()


def sign(account: LocalAccount, message: str) -> str:
    signed = account.sign_message(encode_defunct(text=message))
    return "0x" + bytes(signed.signature).hex().removeprefix("0x")


@pytest.fixture
def sign_in(api_client: APIClient) -> Callable[[LocalAccount], dict[str, Any]]:
    """The dApp's whole flow: ask a nonce, sign the message with the wallet, log in."""

    def flow(account: LocalAccount) -> dict[str, Any]:
        nonce = api_client.post("/api/v1/auth/nonce", {"address": account.address}, format="json")
        assert nonce.status_code == 200, nonce.json()
        message = nonce.json()["message"]
        login = api_client.post(
            "/api/v1/auth/login",
            {"message": message, "signature": sign(account, message)},
            format="json",
        )
        assert login.status_code == 200, login.json()
        return dict(login.json())

    return flow


@pytest.fixture
def borrower_client(db: None, wallet: LocalAccount, sign_in: Any) -> APIClient:
    token = sign_in(wallet)["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def operator_user(db: None) -> Any:
    user = get_user_model().objects.create_user(
        username="op", password="correct horse battery", is_staff=True
    )
    user_role_set(user=user, role=OPERATOR)
    return user


@pytest.fixture
def operator_client(operator_user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_issue(user=operator_user).token}")
    return client


@pytest.fixture
def metrics_key(db: None) -> str:
    return api_key_create(name="prometheus", role="metrics")[1]


@pytest.fixture(autouse=True)
def _api_test_settings(settings: Any) -> None:
    """Test URLs (the project's plus a few probe views) and throttles out of the way; the
    throttling tests set their own rates."""
    settings.ROOT_URLCONF = "tests.api.urls"
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"ip": "100000/minute", "user": None, "auth": None},
    }
    settings.LENDER_EVM_PRIVATE_KEY = (
        "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    )
