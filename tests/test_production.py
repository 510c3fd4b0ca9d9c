"""Production configuration: the service refuses unsafe secrets outside DEBUG (web, worker,
beat) with one line, `check --deploy` is clean with deploy/production.env.example, and gunicorn
serves the static files and the API docs itself, with redacted access logs."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from btcloan.dev import localnodes

BASE_DIR = Path(__file__).resolve().parent.parent
EXAMPLE_ENV = BASE_DIR / "deploy" / "production.env.example"
GUNICORN_CONF = BASE_DIR / "deploy" / "gunicorn.conf.py"
# Everything that configures the service; a subprocess gets only what a test gives it.
CONFIG_PREFIXES = ("DJANGO_", "BTCLOAN_", "LENDER_", "DATABASE_URL", "REDIS_URL", "CELERY_")


def safe_secrets() -> dict[str, str]:
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "BTCLOAN_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "LENDER_EVM_PRIVATE_KEY": "0x" + secrets.token_hex(32),
        "LENDER_BTC_PRIVATE_KEY": secrets.token_hex(32),
    }


def service_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env["DJANGO_SETTINGS_MODULE"] = "btcloan.settings"
    env["BTCLOAN_VAR_DIR"] = str(tmp_path / "var")
    env.update(extra)
    return env


def example_env() -> dict[str, str]:
    """deploy/production.env.example with its empty (secret) values filled in."""
    generated = safe_secrets()
    values: dict[str, str] = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        values[name] = value or generated[name]
    return values


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# --- check --deploy ---------------------------------------------------------------------------
def test_check_deploy_is_clean_with_the_documented_production_env(tmp_path: Path) -> None:
    values = example_env()
    assert values["DJANGO_DEBUG"] == "false"
    result = _run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        service_env(tmp_path, **values),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_reports_every_unsafe_default(tmp_path: Path) -> None:
    result = _run([sys.executable, "manage.py", "check", "--deploy"], service_env(tmp_path))
    assert result.returncode != 0
    out = result.stdout + result.stderr
    for found in (
        "btcloan.E001",
        "DJANGO_SECRET_KEY is a published default",
        "BTCLOAN_ENCRYPTION_KEYS is not set",
        "LENDER_EVM_PRIVATE_KEY is not set",
        "security.W004",  # HSTS
        "security.W008",  # SSL redirect
        "security.W012",  # session cookie
        "security.W016",  # CSRF cookie
    ):
        assert found in out, found


# --- refusal at start-up ----------------------------------------------------------------------
UNSAFE = [
    ("DJANGO_SECRET_KEY", "btcloan-insecure-development-key-change-me", "a published default"),
    ("DJANGO_SECRET_KEY", "change-me-in-production", "a published default"),
    ("DJANGO_SECRET_KEY", "s3cr3t-but-only-thirty-chars-x", "too short"),
    ("DJANGO_SECRET_KEY", "ab" * 40, "too short or too plain"),
    ("BTCLOAN_ENCRYPTION_KEYS", "", "BTCLOAN_ENCRYPTION_KEYS is not set"),
    ("LENDER_EVM_PRIVATE_KEY", "", "LENDER_EVM_PRIVATE_KEY is not set"),
    ("LENDER_EVM_PRIVATE_KEY", "0x1234", "LENDER_EVM_PRIVATE_KEY is not a valid key"),
    ("LENDER_BTC_PRIVATE_KEY", "", "no lender Bitcoin key"),
]


def _one_line_refusal(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0, result.stdout
    # Celery beat prints stderr through its logger: the line may carry a log prefix there.
    lines = [line for line in result.stderr.splitlines() if "btcloan:" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "btcloan: configuration error: refusing to start outside DEBUG: " in lines[0]
    assert reason in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "value", "reason"), UNSAFE)
def test_the_wsgi_app_refuses_an_unsafe_config(
    tmp_path: Path, name: str, value: str, reason: str
) -> None:
    env = service_env(tmp_path, **{**safe_secrets(), name: value})
    result = _run([sys.executable, "-c", "import btcloan.wsgi"], env)
    _one_line_refusal(result, reason)


def test_the_wsgi_and_asgi_apps_load_with_safe_secrets_or_in_debug(tmp_path: Path) -> None:
    for module in ("btcloan.wsgi", "btcloan.asgi"):
        safe = _run(
            [sys.executable, "-c", f"import {module}"], service_env(tmp_path, **safe_secrets())
        )
        assert safe.returncode == 0, safe.stderr
        debug = _run(
            [sys.executable, "-c", f"import {module}"], service_env(tmp_path, DJANGO_DEBUG="1")
        )
        assert debug.returncode == 0, debug.stderr


def test_gunicorn_refuses_to_start_with_the_default_key(tmp_path: Path) -> None:
    env = service_env(tmp_path, **{**safe_secrets(), "DJANGO_SECRET_KEY": "short-key"})
    env["GUNICORN_BIND"] = f"127.0.0.1:{localnodes.free_port()}"
    result = _run([sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)], env)
    _one_line_refusal(result, "too short")


@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_refuses_to_start_without_encryption_keys(tmp_path: Path, program: str) -> None:
    env = service_env(tmp_path, **{**safe_secrets(), "BTCLOAN_ENCRYPTION_KEYS": ""})
    argv = [sys.executable, "-m", "celery", "-A", "btcloan", program, "--loglevel=WARNING"]
    if program == "worker":
        argv += ["--pool=solo"]
    else:
        argv += [f"--schedule={tmp_path / 'beat-schedule'}"]
    result = _run(argv, env)
    _one_line_refusal(result, "BTCLOAN_ENCRYPTION_KEYS is not set")


# --- gunicorn serves the static files, the docs, and redacted access logs ----------------------
@pytest.fixture
def gunicorn_url(tmp_path: Path) -> Iterator[str]:
    """gunicorn with deploy/gunicorn.conf.py, DEBUG off, on files collected by collectstatic."""
    port = localnodes.free_port()
    env = service_env(
        tmp_path,
        **safe_secrets(),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        DJANGO_STATIC_ROOT=str(tmp_path / "static"),
        # No database here: the pages under test need none, the health answers 503.
        DATABASE_URL="postgres://nobody@127.0.0.1:1/none",
    )
    collected = _run([sys.executable, "manage.py", "collectstatic", "--noinput"], env)
    assert collected.returncode == 0, collected.stderr
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(url + "/static/admin/css/base.css"):
            assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not answer"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own server
            return True
    except (OSError, urllib.error.URLError):
        return False


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_gunicorn_serves_static_files_and_self_contained_docs(
    gunicorn_url: str, tmp_path: Path
) -> None:
    status, headers, body = _get(gunicorn_url + "/static/admin/css/base.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert b"--body-bg" in body  # the admin's own stylesheet
    for page, asset in (
        ("/api/docs/", "swagger-ui-bundle.js"),
        ("/api/redoc/", "redoc.standalone.js"),
    ):
        status, _, body = _get(gunicorn_url + page)
        assert status == 200, page
        html = body.decode()
        scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
        assert scripts, html
        assert all(src.startswith("/static/") for src in scripts), scripts
        assert any(src.endswith(asset) for src in scripts), scripts
        for src in scripts:
            assert _get(gunicorn_url + src)[0] == 200, src


def test_the_access_log_redacts_query_string_tokens(gunicorn_url: str, tmp_path: Path) -> None:
    token = "btl_" + secrets.token_urlsafe(32)
    other = secrets.token_hex(16)
    _get(f"{gunicorn_url}/api/v1/health?token={token}&api_key={other}&page=2")
    log_path = tmp_path / "gunicorn.log"
    deadline = time.monotonic() + 10
    while "GET /api/v1/health" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log_path.read_text()
    assert "GET /api/v1/health?token=[redacted]&api_key=[redacted]&page=2" in text, text
    assert token not in text
    assert other not in text
