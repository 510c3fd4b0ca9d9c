"""The operators' admin in a real browser: headless Chromium signs in as an operator, opens the
change page of a loan the desk drove to "active" on anvil and the Bitcoin node, and renders
it. The page it rendered must show the loan and its timeline (EVM events, Bitcoin facts, the
backend's actions); the screenshot must be a real PNG of the page.
"""

from __future__ import annotations

import html
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from loans.models import Loan, LoanStatus
from loans.selectors import loan_timeline
from tests.browser.urls import login_link
from tests.integration.conftest import Desk, desk
from tests.integration.test_lifecycles import activated

__all__ = ["desk"]  # the integration lane's fixture, used here

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.evm,
    pytest.mark.bitcoin_node,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: `apt-get install chromium` (Debian; .ci/run installs it)",
    ),
]

WIDTH, HEIGHT = 1400, 2000


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@pytest.fixture
def loan(desk: Desk) -> Loan:
    onchain_id = activated(desk, desk.borrower())
    return desk.loan(onchain_id)


@pytest.fixture
def operator(transactional_db: None) -> Any:
    return get_user_model().objects.create_user(
        username="operator", password="not used by this test", is_staff=True, is_superuser=True
    )


def test_the_loan_page_with_its_timeline(
    settings: Any, live_server: Any, loan: Loan, operator: Any, tmp_path: Path
) -> None:
    settings.ROOT_URLCONF = "tests.browser.urls"
    page = f"/admin/loans/loan/{loan.pk}/change/"
    profile = tmp_path / "chromium-profile"

    dom = _chromium(
        profile, "--dump-dom", live_server.url + login_link(user_id=operator.pk, next_path=page)
    ).stdout
    screenshot = tmp_path / "loan.png"
    _chromium(
        profile,
        f"--screenshot={screenshot}",
        live_server.url + login_link(user_id=operator.pk, next_path=page),
    )
    print(f"\nadmin screenshot: {screenshot}")

    # Signed in, on the loan's page, with its data.
    assert "Log out" in dom
    assert "Change loan" in dom
    assert loan.status == LoanStatus.ACTIVE
    for shown in (
        loan.borrower_address,
        loan.escrow_address,
        loan.escrow_txid,
        loan.collateral_txid,
        str(loan.onchain_id),
        "active",
        "repay before the due block",  # the next action
    ):
        assert shown in dom, shown
    # The timeline: every entry of the three sources, in the table the admin renders.
    assert 'class="btcloan-timeline"' in dom
    entries = loan_timeline(loan=loan)
    assert {e.source for e in entries} == {"evm", "bitcoin", "backend"}
    for entry in entries:
        assert html.escape(entry.what, quote=False) in dom, entry.what
    timeline = dom.split('class="btcloan-timeline"', 1)[1].split("</table>", 1)[0]
    assert timeline.count("<tr>") == len(entries) + 1  # plus the header row
    for what in ("LoanRequested", "LoanOffered", "LoanActivated", "tx_confirmed"):
        assert what in timeline, what

    # A real picture of the page: the window's size, and far more than a blank page weighs.
    assert _png_size(screenshot) == (WIDTH, HEIGHT)
    assert screenshot.stat().st_size > 50_000
