"""Structured logs: JSON lines with the loan id, and no secret in any log line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from btcloan.logs import ContextFilter, JsonFormatter, RedactSecretsFilter, log_context

BASE_DIR = Path(__file__).resolve().parent.parent
EVM_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
BTC_KEY = "cVpF924EspNh8KjYsfhgY96mmxvT6DgdWiTYMtMjuM74hJaU5psW"


@pytest.fixture
def secrets_set(settings: Any) -> Any:
    settings.LENDER_EVM_PRIVATE_KEY = EVM_KEY
    settings.LENDER_BTC_PRIVATE_KEY = BTC_KEY
    settings.SECRET_KEY = "django-secret-key-for-the-redaction-test"
    return settings


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger wired like settings.LOGGING with LOG_FORMAT=json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_loan_id(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.info("outside")
    with log_context(loan_id=42):
        logger.info("collateral seen: %d sats", 150_000, extra={"txid": "ab" * 32})
        with log_context(workflow_id=9):
            logger.warning("nested")
    logger.info("after")
    lines = _lines(stream)
    assert [line["loan_id"] for line in lines] == [None, 42, 42, None]
    assert lines[1]["message"] == "collateral seen: 150000 sats"
    assert lines[1]["txid"] == "ab" * 32
    assert lines[1]["level"] == "INFO"
    assert lines[1]["logger"] == "tests.logs"
    assert lines[2]["workflow_id"] == 9
    assert "workflow_id" not in lines[3]


def test_secrets_never_reach_a_log_line(
    secrets_set: Any, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, stream = json_log
    logger.info("signing with %s", EVM_KEY)
    logger.info("upper-case, no prefix: %s", EVM_KEY[2:].upper())
    logger.info("btc key %s and django key %s", BTC_KEY, secrets_set.SECRET_KEY)
    logger.info("header was Bearer btl_abcdefghijklmnopqrstuvwxyz0123 ok")
    logger.info("client sent Api-Key btk_ABCDEFGHIJKLMNOPQRSTUVWX ok")
    logger.info("rpc at http://btcloan:rpc-password@127.0.0.1:18443/")
    logger.info("extra field", extra={"payload": {"key": EVM_KEY}})
    try:
        raise RuntimeError(f"cannot sign with {EVM_KEY}")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue()
    for secret in (
        EVM_KEY[2:].lower(),
        BTC_KEY,
        "django-secret-key-for-the-redaction-test",
        "btl_abcdefghijklmnopqrstuvwxyz0123",
        "btk_ABCDEFGHIJKLMNOPQRSTUVWX",
        "rpc-password",
    ):
        assert secret.lower() not in text.lower(), secret
    lines = _lines(stream)
    assert lines[0]["message"] == "signing with [redacted]"
    assert lines[3]["message"] == "header was Bearer [redacted] ok"
    assert "RuntimeError: cannot sign with [redacted]" in lines[-1]["exception"]


@pytest.mark.django_db
def test_a_500_logs_the_error_redacted(secrets_set: Any, settings: Any) -> None:
    from rest_framework.test import APIClient

    settings.ROOT_URLCONF = "tests.api.urls"
    # The console handler settings.LOGGING configured, with its filters, writing to a buffer.
    (console,) = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    assert isinstance(console, logging.StreamHandler)
    buffer = io.StringIO()
    previous = console.setStream(buffer)
    try:
        response = APIClient(raise_request_exception=False).get("/api/test/explodes")
    finally:
        console.setStream(previous)
    assert response.status_code == 500
    log = buffer.getvalue()
    assert "unhandled error in Explodes" in log
    assert "cannot sign with [redacted]" in log
    assert EVM_KEY[2:] not in log
    assert EVM_KEY[2:] not in response.content.decode()


def test_log_format_setting_selects_json(tmp_path: Path) -> None:
    script = (
        "import django, logging; django.setup(); "
        "from btcloan.logs import log_context\n"
        "with log_context(loan_id=5): logging.getLogger('x').warning('hello %s', "
        f"'{EVM_KEY}')"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "btcloan.settings",
        "BTCLOAN_VAR_DIR": str(tmp_path),
        "LOG_FORMAT": "json",
        "LENDER_EVM_PRIVATE_KEY": EVM_KEY,
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert line["loan_id"] == 5
    assert line["message"] == "hello [redacted]"

    env["LOG_FORMAT"] = "xml"
    bad = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "LOG_FORMAT must be json or plain" in bad.stderr
