"""The operators' dashboard and a loan's timeline picture in a real browser: headless Chromium
signs in as an operator and opens /admin/dashboard/ and a loan's page, with loans the desk
drove on anvil and the Bitcoin node (one active with its collateral confirmed, one offered).

The figures on the page are checked against the database (sums and deadlines computed here from
the rows, not through the dashboard's code), and screenshots are saved (BTCLOAN_SCREENSHOT_DIR,
else the test's temporary folder) for a person to look at.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db.models import Sum
from django.utils import timezone

from btcloan.models import Alert
from chainwatch.models import ChainCursor, DeliveryStatus, EvmEvent
from loans.models import BitcoinStage, Loan, LoanStatus
from tests.browser.test_admin_screenshot import CHROMIUM, _chromium, _png_size
from tests.browser.urls import layout_probe_link, login_link
from tests.integration.conftest import Desk, desk
from tests.integration.test_lifecycles import activated, offered

__all__ = ["desk"]  # the integration lane's fixture, used here

pytestmark = [
    pytest.mark.evm,
    pytest.mark.bitcoin_node,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium: `apt-get install chromium` (Debian; .ci/run installs it)",
    ),
]


# The operators' busiest lists (the loan, the audit trail, both chains' records and outboxes).
LIST_PAGES = (
    "/admin/loans/loan/",
    "/admin/loans/auditentry/",
    "/admin/chainwatch/evmevent/",
    "/admin/chainwatch/evmtransaction/",
    "/admin/bitcoin/bitcointransaction/",
    "/admin/bitcoin/bitcoinfact/",
)


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BTCLOAN_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _sum(queryset: Any, field: str) -> int:
    return int(queryset.aggregate(total=Sum(field))["total"] or 0)


@pytest.fixture
def loans(desk: Desk) -> tuple[Loan, Loan]:
    active = desk.loan(activated(desk, desk.borrower()))
    waiting = desk.loan(offered(desk, desk.borrower(2)))
    now = timezone.now()
    Alert.objects.create(
        key="browser-test",
        severity="warning",
        title=f"loan {active.onchain_id}: repayment margin low",
        first_seen_at=now,
        last_seen_at=now,
        loan_ref=str(active.pk),
    )
    return active, waiting


@pytest.fixture
def operator(transactional_db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(
        username="operator", password="not used by this test", is_staff=True, is_superuser=True
    )


def _open(live_server: Any, operator: Any, profile: Path, page: str, shot: Path) -> str:
    dom = _chromium(
        profile, "--dump-dom", live_server.url + login_link(user_id=operator.pk, next_path=page)
    ).stdout
    _chromium(
        profile,
        f"--screenshot={shot}",
        live_server.url + login_link(user_id=operator.pk, next_path=page),
    )
    print(f"\nscreenshot: {shot}")
    assert "Log out" in dom  # signed in
    return dom


def test_the_dashboard_and_a_loan_picture(
    settings: Any, live_server: Any, loans: tuple[Loan, Loan], operator: Any, tmp_path: Path
) -> None:
    settings.ROOT_URLCONF = "tests.browser.urls"
    active, waiting = loans
    profile, shots = tmp_path / "chromium-profile", _shots(tmp_path)

    dom = _open(live_server, operator, profile, "/admin/dashboard/", shots / "dashboard.png")
    assert "btcloan-dashboard" in dom
    figures = dict(re.findall(r'data-figure="(\w+)" data-value="(\d+)"', dom))
    every = Loan.objects.all()
    assert figures == {
        "collateral_sats": str(
            _sum(
                every.filter(
                    bitcoin_stage__in=(
                        BitcoinStage.COLLATERAL_LOCKED,
                        BitcoinStage.COLLATERAL_CONFIRMED,
                    )
                ),
                "collateral_value_sats",
            )
        ),
        "escrow_sats": str(
            _sum(
                every.filter(
                    bitcoin_stage__in=(BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED)
                ),
                "escrow_value_sats",
            )
        ),
        "lent_wei": str(_sum(every.filter(activation_block__isnull=False), "amount_wei")),
        "outstanding_wei": str(
            _sum(
                every.filter(status__in=(LoanStatus.ACTIVE, LoanStatus.REPAYMENT_IN_PROGRESS)),
                "amount_wei",
            )
        ),
        "defaulted_wei": "0",
    }
    assert active.collateral_value_sats is not None
    assert active.activation_block is not None
    assert waiting.offer_block is not None
    assert int(figures["collateral_sats"]) == active.collateral_value_sats > 0
    assert int(figures["outstanding_wei"]) == int(active.amount_wei)
    assert "Loan book (2 loans)" in dom
    # The deadlines, from the rows: the active loan's repayment and the offer's expiry.
    cursor = ChainCursor.objects.get(chain_id=django_settings.EVM_CHAIN_ID).block_number
    head = cursor + django_settings.EVM_CONFIRMATIONS
    rows = {
        (int(loan), kind): int(left)
        for loan, kind, left in re.findall(
            r'data-loan="(\d+)" data-kind="(\w+)" data-blocks-left="(-?\d+)"', dom
        )
    }
    assert rows[(active.pk, "repayment_due")] == (
        active.activation_block + active.loan_duration - (head + 1)
    )
    assert rows[(waiting.pk, "offer_expiry")] == (
        waiting.offer_block + waiting.timelock_borrower - (head + 1)
    )
    assert html.escape(f"loan {active.onchain_id}: repayment margin low") in dom
    assert dom.count("<svg") >= 5  # two loan-book charts, the margins, the queues
    assert _png_size(shots / "dashboard.png")[0] == 1400

    page = f"/admin/loans/loan/{active.pk}/change/"
    dom = _open(live_server, operator, profile, page, shots / "loan.png")
    picture = dom.split('class="btcloan-timeline-chart"', 1)[1].split("</svg>", 1)[0]
    events = EvmEvent.objects.filter(chain_id=active.chain_id, loan_id=active.onchain_id).exclude(
        status=DeliveryStatus.ORPHANED
    )
    assert events.count() >= 4
    for event in events:
        assert f"{event.event_name} at block {event.block_number}" in picture, event.event_name
    assert f"tx_confirmed (collateral_lock) at block {active.collateral_confirmed_height}" in (
        picture
    )
    assert f"now #{head}" in picture
    assert "repayment due (" in picture  # the deadline ahead, as a flag

    dom = _open(live_server, operator, profile, "/admin/loans/loan/", shots / "loans.png")
    assert "updated at" in dom.lower()  # the right-most column is there
    assert _png_size(shots / "loans.png") == (1400, 2000)

    # At 1,400 px every list page keeps its right-hand columns in view: nothing scrolls
    # sideways and the last column ends inside the window (measured in the rendered page).
    for page in LIST_PAGES:
        probe = live_server.url + login_link(
            user_id=operator.pk, next_path=layout_probe_link(page=page)
        )
        dom = _chromium(profile, "--virtual-time-budget=15000", "--dump-dom", probe).stdout
        found = re.search(
            r'id="layout-probe" data-scrolls="(\w+)" data-last-right="(\d+)" '
            r'data-viewport="(\d+)" data-columns="(\d+)"',
            dom,
        )
        assert found, (page, dom[-2000:])
        scrolls, last_right, viewport, columns = found.groups()
        assert int(columns) >= 5, page
        assert scrolls == "false", page
        assert int(last_right) <= int(viewport), (page, last_right, viewport)
