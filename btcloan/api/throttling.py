"""Throttles whose rates are read from settings at request time (so a deploy, or a test, can
change them): per client IP for everyone, per user or API key once signed in, and a tighter
"auth" scope on the sign-in endpoints."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from rest_framework import exceptions, throttling
from rest_framework.request import Request
from rest_framework.settings import api_settings


class _SettingsRate:
    scope: str

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class IpRateThrottle(_SettingsRate, throttling.SimpleRateThrottle):
    scope = "ip"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class UserRateThrottle(_SettingsRate, throttling.SimpleRateThrottle):
    scope = "user"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if not (request.user and request.user.is_authenticated):
            return None  # anonymous clients are limited by IP only
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class AuthRateThrottle(_SettingsRate, throttling.SimpleRateThrottle):
    """Sign-in attempts per client IP."""

    scope = "auth"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class MetricsRateThrottle(_SettingsRate, throttling.SimpleRateThrottle):
    """/metrics per client address: scrapers poll every few seconds, nobody needs more."""

    scope = "metrics"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AuthFailureThrottle(_SettingsRate, throttling.SimpleRateThrottle):
    """Failed authentications per client address. DRF checks throttles after authentication,
    so a wrong token or key was never counted: the authentication classes ask this instead,
    before looking a credential up (`refuse_if_exceeded`) and on each failure (`record`)."""

    scope = "auth_failure"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _recent(self, request: Request) -> list[float]:
        self.key = self.get_cache_key(request, None)
        self.now = self.timer()
        history: list[float] = self.cache.get(self.key, [])
        return [at for at in history if at > self.now - self.duration]

    def refuse_if_exceeded(self, request: Request) -> None:
        if self.rate is None:
            return
        self.history = self._recent(request)
        if len(self.history) >= self.num_requests:
            raise exceptions.Throttled(self.wait())

    def record(self, request: Request) -> None:
        if self.rate is None:
            return
        recent = self._recent(request)  # sets self.key and self.now
        self.history = [self.now, *recent]
        self.cache.set(self.key, self.history, self.duration)


def client_ip(request: HttpRequest) -> str | None:
    """The client address the throttles use (API_NUM_PROXIES), for the admin's login lockout;
    None for a request without one (a test client's force_login)."""
    ident = throttling.BaseThrottle().get_ident(request)
    return str(ident) if ident else None
