"""Structured logs: a JSON formatter, a loan-id context, and a filter that redacts secrets.

    with log_context(loan_id=42):
        logger.info("collateral seen")   # {"...", "loan_id": 42, "message": "collateral seen"}

The context is a contextvar, so it follows the code path (threads, asyncio tasks) that set it.
`RedactSecretsFilter` sits on the handlers: the values of the secret settings, and anything
shaped like one of our bearer tokens or API keys, never reach a log line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "btcloan_log_context", default=None
)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach fields (loan_id, workflow_id, ...) to every log record emitted inside the block."""
    merged = {**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_log_context() -> dict[str, Any]:
    return dict(_CONTEXT.get() or {})


class ContextFilter(logging.Filter):
    """Copies the log context onto the record (`record.loan_id`, ...; loan_id is always set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _CONTEXT.get() or {}
        for key, value in context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "loan_id"):
            record.loan_id = None
        return True


# --- Redaction -------------------------------------------------------------------------------
# Settings whose values are secrets. Hex keys are also matched without their 0x.
SECRET_SETTINGS = (
    "SECRET_KEY",
    "LENDER_EVM_PRIVATE_KEY",
    "LENDER_BTC_PRIVATE_KEY",
    "BTCLOAN_ENCRYPTION_KEYS",
    "EMAIL_HOST_PASSWORD",
)
# Our bearer tokens and API keys (btcloan.api.services), and credentials in headers or URLs.
_SHAPES = (
    re.compile(r"\bbt[lk]_[A-Za-z0-9_\-]{20,}"),
    re.compile(r"(?i)\b(Bearer|Api-Key)\s+[A-Za-z0-9_\-\.=]{8,}"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
)
REDACTED = "[redacted]"
# Credentials in a query string (access logs print the request line): the name stays.
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:token|access_token|auth_token|api_key|apikey|key|password|secret|signature)=)"
    r"[^&;\s\"']+"
)


def _secret_values() -> tuple[str, ...]:
    from django.conf import settings

    if not settings.configured:
        return ()
    values: list[str] = []
    for name in SECRET_SETTINGS:
        value = getattr(settings, name, None)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str) and len(item) >= 8:
                values.append(item)
                if item.lower().startswith("0x"):
                    values.append(item[2:])
    return tuple(sorted(set(values), key=len, reverse=True))


@lru_cache(maxsize=8)
def _pattern(values: tuple[str, ...]) -> re.Pattern[str] | None:
    if not values:
        return None
    return re.compile("|".join(re.escape(v) for v in values), re.IGNORECASE)


def redact(text: str) -> str:
    pattern = _pattern(_secret_values())
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for shape in _SHAPES:
        text = shape.sub(lambda m: f"{m.group(1)} {REDACTED}" if m.lastindex else REDACTED, text)
    return _QUERY_SECRET.sub(rf"\g<1>{REDACTED}", text)


class RedactSecretsFilter(logging.Filter):
    """Renders the message (and traceback) now, redacted, so no handler sees the raw text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template, drop the arguments
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# --- JSON ------------------------------------------------------------------------------------
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, loan_id, context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "loan_id": getattr(record, "loan_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in payload:
                payload[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        # Extras are caller-supplied values too: redact the whole line.
        return redact(json.dumps(payload, default=str, ensure_ascii=False))
