"""Sign-in with Ethereum end to end (a real secp256k1 key), tokens, API keys and roles."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from btcloan.api import siwe
from btcloan.api.services import access_token_issue, api_key_create, auth_records_purge
from btcloan.models import AccessToken, ApiKey, BorrowerWallet, SignInNonce
from tests.api.conftest import sign

pytestmark = pytest.mark.django_db


def _nonce(client: APIClient, account: LocalAccount) -> dict[str, Any]:
    response = client.post("/api/v1/auth/nonce", {"address": account.address}, format="json")
    assert response.status_code == 200
    return dict(response.json())


def _login(client: APIClient, message: str, signature: str) -> Any:
    return client.post(
        "/api/v1/auth/login", {"message": message, "signature": signature}, format="json"
    )


def _assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_wallet_signs_in_and_the_token_authenticates_as_that_borrower(
    api_client: APIClient, wallet: LocalAccount, settings: Any
) -> None:
    issued = _nonce(api_client, wallet)
    message = siwe.parse_message(issued["message"])
    assert message.domain == settings.SIWE_DOMAIN
    assert message.uri == settings.SIWE_URI
    assert message.chain_id == settings.EVM_CHAIN_ID
    assert message.address == wallet.address
    assert message.nonce == issued["nonce"]
    assert message.expiration_time is not None

    login = _login(api_client, issued["message"], sign(wallet, issued["message"]))
    assert login.status_code == 200, login.json()
    body = login.json()
    assert body["role"] == "borrower"
    assert body["address"] == wallet.address
    # Only a hash is stored, never the token.
    stored = AccessToken.objects.get()
    assert stored.token_hash == hashlib.sha256(body["token"].encode()).hexdigest()
    assert not AccessToken.objects.filter(token_hash=body["token"]).exists()

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    assert me.json() == {
        "role": "borrower",
        "address": wallet.address,
        "username": wallet.address,
        "auth": "token",
    }
    # Signing in again binds to the same user.
    lowercase = api_client.post(
        "/api/v1/auth/nonce", {"address": wallet.address.lower()}, format="json"
    ).json()
    assert lowercase["address"] == wallet.address
    assert (
        _login(api_client, lowercase["message"], sign(wallet, lowercase["message"])).status_code
        == 200
    )
    assert BorrowerWallet.objects.filter(address=wallet.address).count() == 1


def test_a_nonce_signs_in_once(api_client: APIClient, wallet: LocalAccount) -> None:
    issued = _nonce(api_client, wallet)
    signature = sign(wallet, issued["message"])
    assert _login(api_client, issued["message"], signature).status_code == 200
    _assert_refused(_login(api_client, issued["message"], signature), 401, "nonce_used")


def test_an_expired_nonce_is_refused(api_client: APIClient, wallet: LocalAccount) -> None:
    issued = _nonce(api_client, wallet)
    SignInNonce.objects.filter(nonce=issued["nonce"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    # The message itself carries a later Expiration Time; the nonce's expiry still rules.
    response = _login(api_client, issued["message"], sign(wallet, issued["message"]))
    _assert_refused(response, 401, "nonce_expired")


def _altered(issued: dict[str, Any], **changes: Any) -> str:
    parsed = siwe.parse_message(issued["message"])
    fields = {**parsed.__dict__, **changes}
    return siwe.build_message(siwe.SiweMessage(**fields))


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"domain": "evil.example"}, 401, "wrong_domain"),
        ({"uri": "https://evil.example"}, 401, "wrong_uri"),
        ({"chain_id": 30}, 401, "wrong_chain_id"),
        ({"version": "2"}, 401, "unsupported_version"),
        ({"nonce": "abcdef0123456789"}, 401, "unknown_nonce"),
        ({"issued_at": timezone.now() + timedelta(hours=1)}, 401, "not_yet_valid"),
        ({"expiration_time": timezone.now() - timedelta(seconds=5)}, 401, "message_expired"),
    ],
)
def test_a_message_with_a_wrong_field_is_refused_with_the_reason(
    api_client: APIClient, wallet: LocalAccount, changes: dict[str, Any], status: int, code: str
) -> None:
    issued = _nonce(api_client, wallet)
    message = _altered(issued, **changes)
    _assert_refused(_login(api_client, message, sign(wallet, message)), status, code)
    # The refusal did not spend the nonce: the genuine message still signs in.
    assert _login(api_client, issued["message"], sign(wallet, issued["message"])).status_code == 200


def test_another_address_cannot_use_a_nonce_or_sign_for_a_wallet(
    api_client: APIClient, wallet: LocalAccount
) -> None:
    intruder = Account.create()
    issued = _nonce(api_client, wallet)
    # The intruder names itself in a message carrying the victim's nonce.
    own = _altered(issued, address=intruder.address)
    _assert_refused(_login(api_client, own, sign(intruder, own)), 401, "nonce_address_mismatch")
    # The intruder signs the victim's message.
    stolen = _login(api_client, issued["message"], sign(intruder, issued["message"]))
    _assert_refused(stolen, 401, "signer_mismatch")
    assert _login(api_client, issued["message"], sign(wallet, issued["message"])).status_code == 200


@pytest.mark.parametrize(
    ("message", "signature", "status", "code", "field"),
    [
        (None, "0x" + "11" * 65, 400, "invalid", "message"),
        ("hello", "0x1234", 400, "invalid", "signature"),
        ("not an EIP-4361 message\n" * 8, "0x" + "11" * 65, 400, "invalid_message", None),
    ],
)
def test_malformed_login_input_is_a_400_naming_the_problem(
    api_client: APIClient,
    message: str | None,
    signature: str,
    status: int,
    code: str,
    field: str | None,
) -> None:
    body = (
        {"signature": signature}
        if message is None
        else {"message": message, "signature": signature}
    )
    response = api_client.post("/api/v1/auth/login", body, format="json")
    _assert_refused(response, status, code)
    if field:
        assert field in response.json()["error"]["details"]


def test_an_unrecoverable_signature_is_refused(api_client: APIClient, wallet: LocalAccount) -> None:
    issued = _nonce(api_client, wallet)
    response = _login(api_client, issued["message"], "0x" + "00" * 65)
    _assert_refused(response, 401, "bad_signature")


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("0x123", "format"),
        ("0x" + "g" * 40, "format"),
        ("0xF39fd6e51aad88F6F4ce6aB8827279cffFb92266", "checksum"),  # one letter's case flipped
    ],
)
def test_nonce_refuses_bad_addresses(api_client: APIClient, address: str, code: str) -> None:
    response = api_client.post("/api/v1/auth/nonce", {"address": address}, format="json")
    _assert_refused(response, 400, "invalid")
    assert response.json()["error"]["details"]["address"][0]["code"] == code


def test_bearer_tokens_that_are_expired_revoked_or_unknown_are_401(
    borrower_client: APIClient, operator_user: Any
) -> None:
    assert borrower_client.get("/api/v1/auth/me").status_code == 200
    assert borrower_client.post("/api/v1/auth/logout").status_code == 204
    revoked = borrower_client.get("/api/v1/auth/me")
    _assert_refused(revoked, 401, "authentication_failed")
    assert revoked["WWW-Authenticate"].startswith("Bearer")

    issued = access_token_issue(user=operator_user)
    AccessToken.objects.filter(user=operator_user).update(expires_at=timezone.now())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    _assert_refused(client.get("/api/v1/auth/me"), 401, "authentication_failed")
    client.credentials(HTTP_AUTHORIZATION="Bearer btl_not-a-real-token")
    _assert_refused(client.get("/api/v1/auth/me"), 401, "authentication_failed")
    _assert_refused(APIClient().get("/api/v1/auth/me"), 401, "not_authenticated")


def test_operator_signs_in_with_password(api_client: APIClient, operator_user: Any) -> None:
    ok = api_client.post(
        "/api/v1/auth/operator-login",
        {"username": "op", "password": "correct horse battery"},
        format="json",
    )
    assert ok.status_code == 200
    assert ok.json()["role"] == "operator"
    wrong = api_client.post(
        "/api/v1/auth/operator-login", {"username": "op", "password": "nope"}, format="json"
    )
    _assert_refused(wrong, 401, "invalid_credentials")


def test_api_key_from_the_command_authenticates_until_revoked() -> None:
    out = StringIO()
    call_command(
        "create_api_key", "reconciler", "--role", "operator", stdout=out, stderr=StringIO()
    )
    key = out.getvalue().strip()
    assert key.startswith("btk_")
    stored = ApiKey.objects.get(name="reconciler")
    assert key not in (stored.key_hash, stored.prefix)
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    me = client.get("/api/v1/auth/me")
    assert me.json()["role"] == "operator"
    assert me.json()["auth"] == "api_key"
    assert client.get("/api/test/operator-only").status_code == 200
    assert ApiKey.objects.get(name="reconciler").last_used_at is not None

    call_command("revoke_api_key", "reconciler", stdout=StringIO())
    _assert_refused(client.get("/api/v1/auth/me"), 401, "authentication_failed")


def test_role_permissions(
    borrower_client: APIClient, operator_client: APIClient, metrics_key: str, wallet: LocalAccount
) -> None:
    metrics_client = APIClient()
    metrics_client.credentials(HTTP_AUTHORIZATION=f"Api-Key {metrics_key}")
    anonymous = APIClient()

    operator_only = "/api/test/operator-only"
    assert operator_client.get(operator_only).status_code == 200
    _assert_refused(borrower_client.get(operator_only), 403, "permission_denied")
    _assert_refused(metrics_client.get(operator_only), 403, "permission_denied")
    _assert_refused(anonymous.get(operator_only), 401, "not_authenticated")

    either = "/api/test/borrower-or-operator"
    assert borrower_client.get(either).json() == {"address": wallet.address}
    assert operator_client.get(either).json() == {"address": None}
    _assert_refused(metrics_client.get(either), 403, "permission_denied")
    _assert_refused(anonymous.get(either), 401, "not_authenticated")


def test_expired_nonces_and_old_tokens_are_purged(
    api_client: APIClient, wallet: LocalAccount, operator_user: Any
) -> None:
    stale = _nonce(api_client, wallet)
    fresh = _nonce(api_client, wallet)
    SignInNonce.objects.filter(nonce=stale["nonce"]).update(
        expires_at=timezone.now() - timedelta(days=2)
    )
    old = access_token_issue(user=operator_user)
    current = access_token_issue(user=operator_user)
    AccessToken.objects.filter(token_hash=hashlib.sha256(old.token.encode()).hexdigest()).update(
        expires_at=timezone.now() - timedelta(days=2)
    )
    assert auth_records_purge() == {"nonces": 1, "tokens": 1}
    assert list(SignInNonce.objects.values_list("nonce", flat=True)) == [fresh["nonce"]]
    assert (
        AccessToken.objects.get().token_hash == hashlib.sha256(current.token.encode()).hexdigest()
    )


def test_admin_pages_show_no_token_or_key_material(operator_user: Any, wallet: Any) -> None:
    from django.test import Client

    operator_user.is_superuser = True
    operator_user.save()
    issued = access_token_issue(user=operator_user)
    _, key = api_key_create(name="prom", role="metrics")
    client = Client()
    client.force_login(operator_user)
    token_row = AccessToken.objects.get()
    key_row = ApiKey.objects.get()
    pages = [
        "/admin/btcloan/accesstoken/",
        f"/admin/btcloan/accesstoken/{token_row.pk}/change/",
        "/admin/btcloan/apikey/",
        f"/admin/btcloan/apikey/{key_row.pk}/change/",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        text = response.content.decode()
        for secret in (issued.token, token_row.token_hash, key, key_row.key_hash):
            assert secret not in text, page
