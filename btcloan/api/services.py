"""Writes for sign-in: nonces, wallet login, bearer tokens, API keys."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import to_checksum_address

from btcloan.api import siwe
from btcloan.api.errors import LOCKED_OUT_MESSAGE, ApiError
from btcloan.api.hashing import secret_hash
from btcloan.api.selectors import is_operator
from btcloan.models import AccessToken, ApiKey, ApiKeyRole, BorrowerWallet, SignInNonce
from btcloan.roles import VIEWER, user_role_set

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "btl_"  # noqa: S105 - a prefix, recognisable (and redacted) in logs
API_KEY_PREFIX = "btk_"
# Allowed clock difference between a wallet and us for Issued At / Not Before.
CLOCK_SKEW = timedelta(seconds=60)


class SignInRefused(ApiError):
    status_code = 401
    default_code = "sign_in_refused"


def _refuse(code: str, message: str, *, status_code: int = 401) -> SignInRefused:
    return SignInRefused(message, code=code, status_code=status_code)


@dataclass(frozen=True)
class IssuedNonce:
    nonce: str
    address: str
    message: str
    issued_at: datetime
    expires_at: datetime


def sign_in_nonce_issue(*, address: str) -> IssuedNonce:
    """A fresh nonce for `address` and the EIP-4361 message that names it."""
    address = to_checksum_address(address)
    now = timezone.now().replace(microsecond=0)
    expires_at = now + timedelta(seconds=settings.SIWE_NONCE_TTL_SECONDS)
    nonce = secrets.token_hex(16)
    # Expired nonces are useless; drop this address's old ones as we go.
    SignInNonce.objects.filter(address=address, expires_at__lt=now).delete()
    SignInNonce.objects.create(nonce=nonce, address=address, issued_at=now, expires_at=expires_at)
    message = siwe.build_message(
        siwe.SiweMessage(
            domain=settings.SIWE_DOMAIN,
            address=address,
            statement=settings.SIWE_STATEMENT or None,
            uri=settings.SIWE_URI,
            version="1",
            chain_id=settings.EVM_CHAIN_ID,
            nonce=nonce,
            issued_at=now,
            expiration_time=expires_at,
        )
    )
    return IssuedNonce(nonce, address, message, now, expires_at)


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once; only its hash is stored
    user: User
    expires_at: datetime


def access_token_issue(*, user: User) -> IssuedToken:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(seconds=settings.AUTH_TOKEN_TTL_SECONDS)
    AccessToken.objects.create(
        user=user,
        token_hash=secret_hash(token),
        password_marker=user.get_session_auth_hash(),
        expires_at=expires_at,
    )
    return IssuedToken(token, user, expires_at)


def access_token_revoke(*, token_id: int) -> bool:
    updated = AccessToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    return updated == 1


def _check_fields(message: siwe.SiweMessage, now: datetime) -> None:
    if message.domain != settings.SIWE_DOMAIN:
        raise _refuse("wrong_domain", f"the message is for {message.domain!r}, not this site")
    if message.uri != settings.SIWE_URI:
        raise _refuse("wrong_uri", "the message's URI is not this site's")
    if message.version != "1":
        raise _refuse("unsupported_version", "only EIP-4361 version 1 is supported")
    if message.chain_id != settings.EVM_CHAIN_ID:
        raise _refuse(
            "wrong_chain_id",
            f"the message is for chain {message.chain_id}, this desk is on {settings.EVM_CHAIN_ID}",
        )
    if message.issued_at > now + CLOCK_SKEW:
        raise _refuse("not_yet_valid", "Issued At is in the future")
    if message.not_before and message.not_before > now + CLOCK_SKEW:
        raise _refuse("not_yet_valid", "Not Before is in the future")
    if message.expiration_time and message.expiration_time <= now:
        raise _refuse("message_expired", "the message's Expiration Time has passed")


def _recover_signer(text: str, signature: str) -> str:
    try:
        signer = Account.recover_message(encode_defunct(text=text), signature=signature)
    except Exception:  # eth_keys raises several types for malformed signatures
        raise _refuse("bad_signature", "the signature is malformed or unrecoverable") from None
    return str(signer)


def wallet_sign_in(*, message: str, signature: str) -> IssuedToken:
    """Verify a signed EIP-4361 message and sign its address in as a borrower.

    Order: the message's own fields, the nonce (issued to this address, unused, unexpired), the
    signature; then the nonce is spent by compare-and-set so two logins with one nonce cannot
    both succeed.
    """
    try:
        parsed = siwe.parse_message(message)
    except siwe.SiweFormatError as exc:
        raise _refuse("invalid_message", str(exc), status_code=400) from None
    now = timezone.now()
    _check_fields(parsed, now)
    record = SignInNonce.objects.filter(nonce=parsed.nonce).first()
    if record is None:
        raise _refuse("unknown_nonce", "this nonce was not issued here; ask for a new one")
    if record.address != parsed.address:
        raise _refuse("nonce_address_mismatch", "this nonce was issued to another address")
    if record.used_at is not None:
        raise _refuse("nonce_used", "this nonce was already used; ask for a new one")
    if record.expires_at <= now:
        raise _refuse("nonce_expired", "this nonce has expired; ask for a new one")
    signer = _recover_signer(message, signature)
    if signer != parsed.address:
        raise _refuse("signer_mismatch", "the signature is not by the message's address")
    with transaction.atomic():
        spent = SignInNonce.objects.filter(
            pk=record.pk, used_at__isnull=True, expires_at__gt=now
        ).update(used_at=now)
        if spent != 1:
            raise _refuse("nonce_used", "this nonce was already used; ask for a new one")
        user = _borrower_for(parsed.address)
        if not user.is_active:
            raise _refuse("account_disabled", "this account is disabled", status_code=403)
        issued = access_token_issue(user=user)
    logger.info("wallet %s signed in", parsed.address)
    return issued


def _borrower_for(address: str) -> User:
    wallet = BorrowerWallet.objects.select_related("user").filter(address=address).first()
    if wallet is not None:
        return wallet.user
    user_model = get_user_model()
    try:
        with transaction.atomic():
            user = user_model.objects.create_user(username=address)
            user.set_unusable_password()
            user.save(update_fields=["password"])
            BorrowerWallet.objects.create(user=user, address=address)
            return user
    except IntegrityError:  # a concurrent first sign-in of the same wallet won
        return BorrowerWallet.objects.select_related("user").get(address=address).user


def operator_sign_in(*, request: HttpRequest, username: str, password: str) -> IssuedToken:
    """A staff user's username and password → a bearer token for the operator API. Failures
    count towards the same lockout as the admin's login form (django-axes, per user + IP)."""
    from axes.exceptions import AxesBackendPermissionDenied
    from django.contrib.auth import authenticate

    try:
        user = authenticate(request, username=username, password=password)
    except AxesBackendPermissionDenied:
        raise _refuse("locked_out", LOCKED_OUT_MESSAGE, status_code=429) from None
    if user is None or not is_operator(user):
        raise _refuse("invalid_credentials", "unknown user, wrong password, or not an operator")
    return access_token_issue(user=user)


def api_key_create(*, name: str, role: str = ApiKeyRole.OPERATOR) -> tuple[ApiKey, str]:
    """A new API key for a service client; returns the key itself once (store it now)."""
    if role not in ApiKeyRole.values:
        raise ValueError(f"role must be one of {', '.join(ApiKeyRole.values)}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=f"svc-{name}", is_staff=role == ApiKeyRole.OPERATOR
        )
        user.set_unusable_password()
        user.save(update_fields=["password"])
        if role == ApiKeyRole.OPERATOR:
            user_role_set(user=user, role=VIEWER)  # service clients read; they never act
        api_key = ApiKey.objects.create(
            name=name, role=role, user=user, prefix=key[:10], key_hash=secret_hash(key)
        )
    return api_key, key


def api_key_revoke(*, name: str) -> bool:
    """Revoke a key at once; requests with it fail from now on. False if none was active."""
    updated = ApiKey.objects.filter(name=name, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    return updated == 1


def auth_records_purge(*, keep: timedelta = timedelta(days=1)) -> dict[str, int]:
    """Delete nonces and tokens that expired (or tokens revoked) more than `keep` ago; a nonce's
    row only matters until it expires, and anyone may ask for nonces."""
    cutoff = timezone.now() - keep
    nonces, _ = SignInNonce.objects.filter(expires_at__lt=cutoff).delete()
    tokens, _ = AccessToken.objects.filter(
        Q(expires_at__lt=cutoff) | Q(revoked_at__lt=cutoff)
    ).delete()
    return {"nonces": nonces, "tokens": tokens}
