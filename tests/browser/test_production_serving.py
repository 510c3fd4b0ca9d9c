"""The service as deployed: gunicorn with deploy/gunicorn.conf.py, DEBUG off, static files
collected and served by WhiteNoise. Headless Chromium, with every host but this machine
unresolvable, signs in to the admin through its login form and finds the admin's stylesheet
applied; Swagger UI and ReDoc render the API from this origin alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from btcloan.dev.localnodes import free_port
from btcloan.roles import VIEWER, user_role_set
from tests.browser.cdp import CHROMIUM, Browser
from tests.conftest import worker_environment

BASE_DIR = Path(__file__).resolve().parents[2]
PASSWORD = "a long enough passphrase for the browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: `apt-get install chromium` (Debian; .ci/run installs it)",
    ),
]


@pytest.fixture
def viewer(transactional_db: None, settings: Any) -> Any:
    # The served process checks the password with the production hasher, not the tests' MD5.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]
    user = get_user_model().objects.create_user(username="vera", password=PASSWORD, is_staff=True)
    user_role_set(user=user, role=VIEWER)
    return user


@pytest.fixture
def served(tmp_path: Path, viewer: Any) -> Iterator[str]:
    """gunicorn on the test database, outside DEBUG, on freshly collected static files."""
    from django.db import connection

    port = free_port()
    env = worker_environment(connection.settings_dict["NAME"])
    env.update(
        DJANGO_DEBUG="false",
        DJANGO_STATIC_ROOT=str(tmp_path / "static"),
        WHITENOISE_USE_FINDERS="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        LENDER_EVM_PRIVATE_KEY="0x" + os.urandom(32).hex(),
        LENDER_BTC_PRIVATE_KEY=os.urandom(32).hex(),
        LENDER_BTC_KEY_FILE="",
    )
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"),
                *("--bind", f"127.0.0.1:{port}", "--workers", "2"),
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _answers(url + "/admin/login/"):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own server
            return True
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = Browser(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


def test_the_admin_is_styled_with_debug_off(served: str, browser: Browser) -> None:
    browser.open(served + "/admin/login/?next=/admin/")
    # Unstyled, the header is transparent; base.css paints it with --header-bg.
    unstyled = "rgba(0, 0, 0, 0)"
    assert browser.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"
    assert browser.evaluate(
        "getComputedStyle(document.querySelector('#header')).backgroundColor"
    ) not in ("", unstyled)
    browser.evaluate(
        "document.querySelector('#id_username').value = 'vera';"
        f"document.querySelector('#id_password').value = {PASSWORD!r};"
        "document.querySelector('#login-form').submit();"
    )
    browser.wait_for("location.pathname === '/admin/' && document.readyState === 'complete'")
    assert "Log out" in browser.evaluate("document.body.innerText") or browser.evaluate(
        "Boolean(document.querySelector('#logout-form'))"
    )
    header = browser.evaluate("getComputedStyle(document.querySelector('#header')).backgroundColor")
    assert header not in ("", unstyled), header
    sheets = browser.evaluate("[...document.styleSheets].map(s => s.href).filter(Boolean)")
    assert any(href.endswith("/static/admin/css/base.css") for href in sheets), sheets
    # A rule of base.css, as the browser applies it: the site name's link colour.
    assert browser.evaluate(
        "[...document.styleSheets].some(s => s.href && s.href.endsWith('base.css')"
        " && s.cssRules.length > 50)"
    )
    assert browser.failed_requests == []
    assert browser.sent_to(served) == []


@pytest.mark.parametrize(
    ("page", "rendered"),
    [
        ("/api/docs/", "document.querySelector('.swagger-ui .info .title')"),
        ("/api/redoc/", "document.querySelector('.api-info h1, [class*=api-info] h1')"),
    ],
)
def test_the_api_docs_render_with_no_network(
    served: str, browser: Browser, page: str, rendered: str
) -> None:
    browser.open(served + page)
    browser.wait_for(f"{rendered} && {rendered}.innerText.includes('btcloan API')")
    assert browser.failed_requests == []
    assert browser.sent_to(served) == []  # nothing left for a third party
