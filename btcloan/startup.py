"""Start-up checks: bad configuration ends the process with one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage
from django.core.exceptions import ImproperlyConfigured


@contextmanager
def fail_fast() -> Iterator[None]:
    from django.db.utils import OperationalError

    try:
        yield
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"btcloan: configuration error: {exc}\n")
        raise SystemExit(2) from None
    except OperationalError as exc:
        sys.stderr.write(f"btcloan: database unreachable: {_first_line(exc)}\n")
        raise SystemExit(2) from None


def database_reachable(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --database default`: open a connection now, so an unreachable database
    is found at start-up (the OperationalError it raises becomes one line in fail_fast)."""
    from django.db import connections

    for alias in kwargs.get("databases") or ():  # none unless --database is given
        connections[alias].ensure_connection()
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Secret keys that are public knowledge: this repo's default, Django's and compose's old ones.
KNOWN_SECRET_KEYS = frozenset(
    {
        "btcloan-insecure-development-key-change-me",
        "change-me-in-production",
        "change-me",
        "changeme",
        "secret",
    }
)
MIN_SECRET_KEY_LENGTH = 50


def unsafe_config_problems() -> list[str]:
    """What makes this configuration unfit to serve outside DEBUG, one sentence each: a secret
    key anyone can know, secrets at rest under a key derived from it, or a lender action that
    would fail for want of its key (the apps' registered checks)."""
    from django.conf import settings

    problems: list[str] = []
    key = str(settings.SECRET_KEY)
    if key in KNOWN_SECRET_KEYS or key.startswith("django-insecure"):
        problems.append("DJANGO_SECRET_KEY is a published default; set a random one")
    elif len(key) < MIN_SECRET_KEY_LENGTH or len(set(key)) < 5:
        problems.append(
            f"DJANGO_SECRET_KEY is too short or too plain "
            f"(at least {MIN_SECRET_KEY_LENGTH} varied characters)"
        )
    if not settings.BTCLOAN_ENCRYPTION_KEYS:
        problems.append(
            "BTCLOAN_ENCRYPTION_KEYS is not set (the lender preimages would be encrypted "
            "with a key derived from DJANGO_SECRET_KEY)"
        )
    problems.extend(_lender_key_problems())
    return problems


# Apps register what their actions need to be safe to run (chainwatch: the lender's EVM key;
# bitcoin: its Bitcoin signer): each returns the problems it finds, one sentence each.
ConfigCheck = Callable[[], list[str]]
_CONFIG_CHECKS: dict[str, ConfigCheck] = {}


def register_config_check(name: str, check: ConfigCheck) -> None:
    _CONFIG_CHECKS[name] = check


def _lender_key_problems() -> list[str]:
    problems: list[str] = []
    for check in _CONFIG_CHECKS.values():
        problems.extend(check())
    return problems


def refuse_unsafe_config() -> None:
    """Outside DEBUG, end start-up (web, worker, beat) with one line naming what is unsafe."""
    from django.conf import settings

    if settings.DEBUG:
        return
    problems = unsafe_config_problems()
    if problems:
        raise ImproperlyConfigured(
            "refusing to start outside DEBUG: " + "; ".join(problems) + " (see docs/security.md)"
        )


def production_config_safe(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --deploy`: the same refusal, as errors (whatever DEBUG says)."""
    from django.core.checks import Error

    return [Error(problem, id="btcloan.E001") for problem in unsafe_config_problems()]
