"""`Authorization: Bearer <token>` (wallet and operator sign-in) and `Authorization: Api-Key
<key>` (service clients). Both look the secret up by its SHA-256; neither is ever stored."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from btcloan.api.hashing import secret_hash
from btcloan.api.throttling import AuthFailureThrottle
from btcloan.models import AccessToken, ApiKey

# last_used_at is a hint for operators, not an audit: write it at most this often per key.
API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)


def _credential(request: Request, keyword: str) -> str | None:
    parts = get_authorization_header(request).split()
    if not parts or parts[0].decode(errors="replace").lower() != keyword.lower():
        return None
    # An address past its failed-authentication budget is refused before any lookup.
    AuthFailureThrottle().refuse_if_exceeded(request)
    if len(parts) != 2:
        raise _failed(
            request, f"Malformed Authorization header: expected '{keyword} <credential>'."
        )
    try:
        return str(parts[1].decode("ascii"))
    except UnicodeDecodeError:
        raise _failed(request, "The credential is not ASCII.") from None


def _failed(request: Request, message: str) -> exceptions.AuthenticationFailed:
    """A failed authentication, counted against the client's address."""
    AuthFailureThrottle().record(request)
    return exceptions.AuthenticationFailed(message)


class BearerTokenAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, AccessToken] | None:
        token = _credential(request, self.keyword)
        if token is None:
            return None
        record = (
            AccessToken.objects.select_related("user", "user__borrower_wallet")
            .filter(token_hash=secret_hash(token), revoked_at__isnull=True)
            .filter(expires_at__gt=timezone.now())
            .first()
        )
        if record is None or not _still_valid(record):
            raise _failed(request, "Invalid, expired or revoked token.")
        return record.user, record

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


def _still_valid(record: AccessToken) -> bool:
    """A deactivated user's tokens, and those issued before the user's last password change
    (the session hash then differs), are revoked on sight."""
    user = record.user
    if user.is_active and constant_time_compare(
        record.password_marker, user.get_session_auth_hash()
    ):
        return True
    AccessToken.objects.filter(pk=record.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    return False


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        key = _credential(request, self.keyword)
        if key is None:
            return None
        record = (
            ApiKey.objects.select_related("user")
            .filter(key_hash=secret_hash(key), revoked_at__isnull=True)
            .first()
        )
        if record is None or not record.user.is_active:
            raise _failed(request, "Invalid or revoked API key.")
        now = timezone.now()
        ApiKey.objects.filter(pk=record.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - API_KEY_TOUCH_INTERVAL)
        ).update(last_used_at=now)
        return record.user, record

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'
