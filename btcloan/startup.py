"""Start-up checks: bad configuration ends the process with one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
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
    from django.db import connection

    connection.ensure_connection()
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def encryption_keys_configured(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --deploy`: secrets at rest must not hang on the Django secret key."""
    from django.conf import settings
    from django.core.checks import Warning

    if settings.BTCLOAN_ENCRYPTION_KEYS:
        return []
    return [
        Warning(
            "BTCLOAN_ENCRYPTION_KEYS is not set: the lender preimages are encrypted with a key "
            "derived from DJANGO_SECRET_KEY",
            hint="Set BTCLOAN_ENCRYPTION_KEYS to one or more Fernet keys (the first encrypts).",
            id="btcloan.W001",
        )
    ]
