"""Validation of the URLs in the environment: a bad one fails at start-up with one clear line."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured


class ConfigError(ImproperlyConfigured):
    """A setting from the environment is missing or malformed."""


def parse_url(name: str, url: str, *, schemes: tuple[str, ...]) -> None:
    """Raise ConfigError unless `url` is well formed with one of `schemes`."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(f"{name} is malformed ({exc}): {_redact(url)}") from None
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{name} must start with one of {allowed}: {_redact(url)}")
    needs_host = parts.scheme not in {"sqlite", "filesystem", "memory", "unix"}
    if needs_host and not parts.hostname:
        raise ConfigError(f"{name} has no host: {_redact(url)}")
    del port


def parse_database_url(name: str, url: str, *, conn_max_age: int = 0) -> dict[str, Any]:
    parse_url(name, url, schemes=("postgres", "postgresql", "pgsql", "sqlite"))
    config: dict[str, Any] = environ.Env.db_url_config(url)
    if config["ENGINE"].endswith("postgresql"):
        # Fail fast when the server is unreachable instead of hanging on connect.
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
        # A process keeps its connection across tasks and requests (checked before reuse):
        # a new one per task cost a server backend and a handshake at every hand-off.
        config["CONN_MAX_AGE"] = conn_max_age
        config["CONN_HEALTH_CHECKS"] = True
    else:
        # Web, worker and beat share the embedded SQLite file: wait for locks instead of
        # failing, and take the write lock at BEGIN so concurrent writers queue up cleanly.
        config.setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
    return config


def _redact(url: str) -> str:
    """The URL without its password, fit for an error line."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable>"
    return url
