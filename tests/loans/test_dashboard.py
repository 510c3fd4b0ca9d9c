"""The operators' dashboard and the loan page's picture: figures from the database, who may see
them, deadlines ordered and coloured by margin, markup from a chain escaped; operator actions in
the loan's admin history; the audit list newest first. (tests/browser renders them in Chromium.)"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from bitcoin.models import BitcoinTransaction
from btcloan.dev.localnodes import free_port
from btcloan.models import Alert
from chainwatch.models import ChainCursor, EvmEvent, EvmTransaction
from loans.charts import Bar, Lane, Mark, bar_chart, timeline_chart
from loans.dashboard import Risk, dashboard, margin_risk
from loans.models import AuditCause, AuditEntry, BitcoinStage, LoanStatus
from loans.services.lifecycle import loan_record
from tests.loans.conftest import loan_factory

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/dashboard/"


@pytest.fixture(autouse=True)
def nodes_away(settings: Any) -> None:
    """No node: the lag reads "unknown" at once instead of waiting on one."""
    settings.EVM_RPC_URL = f"http://127.0.0.1:{free_port()}"
    settings.BITCOIN_RPC_URL = f"http://u:p@127.0.0.1:{free_port()}"
    settings.HEALTH_PROBE_TIMEOUT = 1.0


@pytest.fixture
def operator(client: Any) -> Any:
    user = get_user_model().objects.create_superuser("alice", "alice@example.com", "pw-12345678")
    client.force_login(user)
    return client


@pytest.fixture
def book(settings: Any) -> dict[str, Any]:
    """Loans in several states, an EVM head at 1,000 (cursor 988 + 12 confirmations)."""
    chain = settings.EVM_CHAIN_ID
    ChainCursor.objects.create(chain_id=chain, block_number=988, block_hash="0x" + "1" * 64)
    common = {"chain_id": chain}
    loans = {
        "requested": loan_factory(**common, escrow_value_sats=1_111),
        "escrowed": loan_factory(
            **common, bitcoin_stage=BitcoinStage.PRESIGNED, escrow_value_sats=2_000_000
        ),
        # Due at 1,000 + 5: 4 blocks after the next one.
        "active": loan_factory(
            **common,
            status=LoanStatus.ACTIVE,
            bitcoin_stage=BitcoinStage.COLLATERAL_CONFIRMED,
            collateral_value_sats=3_000_000,
            collateral_confirmed_height=50,
            activation_block=905,
            loan_duration=100,
            amount_wei=Decimal(3 * 10**16),
        ),
        # Due block passed (999 < 1,000 + 1): the most urgent.
        "overdue": loan_factory(
            **common,
            status=LoanStatus.ACTIVE,
            bitcoin_stage=BitcoinStage.COLLATERAL_LOCKED,
            collateral_value_sats=4_000_000,
            activation_block=899,
            loan_duration=100,
            amount_wei=Decimal(4 * 10**16),
        ),
        "repaid_pending": loan_factory(
            **common,
            status=LoanStatus.REPAYMENT_IN_PROGRESS,
            activation_block=500,
            repayment_block=990,
            timelock_lender=500,
            amount_wei=Decimal(5 * 10**16),
        ),
        "defaulted": loan_factory(
            **common,
            status=LoanStatus.DEFAULTED,
            activation_block=100,
            amount_wei=Decimal(6 * 10**16),
        ),
        "closed": loan_factory(
            **common,
            status=LoanStatus.CLOSED,
            bitcoin_stage=BitcoinStage.RELEASED,
            activation_block=10,
            collateral_value_sats=9_999,
            amount_wei=Decimal(7 * 10**16),
        ),
    }
    return loans


def test_the_figures_add_up_from_the_database(book: dict[str, Any]) -> None:
    d = dashboard()
    assert d.loans_total == 7
    counts = {c.key: c.count for c in d.by_status}
    assert counts["active"] == 2
    assert counts["requested"] == 2
    assert sum(counts.values()) == 7
    assert sum(c.count for c in d.by_stage) == 7
    assert d.escrow_sats == 2_000_000  # presigned only: an unconfirmed deposit is not counted
    assert d.collateral_sats == 3_000_000 + 4_000_000  # locked or confirmed, not released
    assert d.lent_wei == (3 + 4 + 5 + 6 + 7) * 10**16  # every activated loan
    assert d.outstanding_wei == (3 + 4 + 5) * 10**16  # active or repayment pending
    assert d.defaulted_wei == 6 * 10**16
    assert d.evm_head == 1_000


def test_deadlines_come_most_urgent_first_with_their_risk(settings: Any, book: Any) -> None:
    settings.LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS = 5
    rows = dashboard().deadlines
    assert [(r.loan_id, r.deadline.kind, r.deadline.blocks_left) for r in rows[:3]] == [
        (book["overdue"].pk, "repayment_due", -2),
        (book["active"].pk, "repayment_due", 4),
        (book["repaid_pending"].pk, "repayment_acceptance", 489),
    ]
    assert [r.risk for r in rows[:3]] == [Risk.PASSED, Risk.CRITICAL, Risk.OK]
    lefts = [r.deadline.blocks_left for r in rows]
    assert lefts == sorted(lefts)


@pytest.mark.parametrize(
    ("blocks_left", "risk"),
    [
        (-1, Risk.PASSED),
        (0, Risk.CRITICAL),
        (12, Risk.CRITICAL),
        (13, Risk.WARNING),
        (36, Risk.WARNING),
        (37, Risk.OK),
    ],
)
def test_margin_risk_bands(settings: Any, blocks_left: int, risk: Risk) -> None:
    settings.LOAN_ALERT_TX1_MARGIN_BLOCKS = 12
    assert margin_risk(chain="bitcoin", blocks_left=blocks_left) == risk


def test_the_page_shows_the_figures_alerts_and_queues(operator: Any, book: Any) -> None:
    now = timezone.now()
    Alert.objects.create(
        key="k1", severity="warning", title="margin low", first_seen_at=now, last_seen_at=now
    )
    Alert.objects.create(
        key="k2", severity="critical", title="TX_1 failed", first_seen_at=now, last_seen_at=now
    )
    Alert.objects.create(
        key="k3",
        severity="critical",
        title="gone",
        first_seen_at=now,
        last_seen_at=now,
        resolved_at=now,
    )
    BitcoinTransaction.objects.create(
        txid="ab" * 32, raw_hex="00", purpose="sweep", status="failed"
    )
    page = operator.get(DASHBOARD)
    assert page.status_code == 200
    html = page.content.decode()
    figures = dict(re.findall(r'data-figure="(\w+)" data-value="(\d+)"', html))
    assert figures == {
        "collateral_sats": "7000000",
        "escrow_sats": "2000000",
        "lent_wei": str(25 * 10**16),
        "outstanding_wei": str(12 * 10**16),
        "defaulted_wei": str(6 * 10**16),
    }
    assert "0.07000000 BTC" in html
    # Open alerts only, the critical one first.
    assert html.index("TX_1 failed") < html.index("margin low")
    assert "gone" not in html
    # Charts are inline SVG; nothing is loaded from elsewhere.
    assert html.count("<svg") >= 4
    assert "<script src=" not in html.replace('src="/static/admin/', "")
    assert "Bitcoin transactions: 0 in flight, 1 to look at" in html
    # The lag is unknown without nodes, and says so.
    assert "node did not answer" in html


def test_only_staff_with_the_loans_permission_see_it(client: Any) -> None:
    assert client.get(DASHBOARD).status_code == 302  # to the admin login
    user = get_user_model().objects.create_user("bob", password="pw-12345678", is_staff=True)
    client.force_login(user)
    assert client.get(DASHBOARD).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_loan"))
    user = get_user_model().objects.get(pk=user.pk)  # permissions are cached per instance
    client.force_login(user)
    assert client.get(DASHBOARD).status_code == 200


def test_markup_from_a_chain_is_escaped_in_the_charts() -> None:
    evil = '<script>alert("x")</script>'
    svg = bar_chart([Bar(evil, 3)], title="t") + timeline_chart(
        [Lane("EVM", 10, [Mark(5, evil, "event")]), Lane("Bitcoin", None, [])]
    )
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


def test_the_loan_page_draws_both_chains_with_events_and_deadlines(
    operator: Any, settings: Any, book: Any
) -> None:
    loan = book["active"]
    EvmEvent.objects.create(
        chain_id=loan.chain_id,
        contract_address=loan.contract_address,
        contract_name="BtcCollateralLoan",
        event_name="LoanActivated",
        block_number=905,
        block_hash="0x" + "2" * 64,
        transaction_hash="0x" + "3" * 64,
        log_index=0,
        loan_id=loan.onchain_id,
        args={},
        delivery_key=f"{loan.chain_id}:{loan.onchain_id}",
    )
    html = operator.get(f"/admin/loans/loan/{loan.pk}/change/").content.decode()
    picture = html.split('class="btcloan-timeline-chart"', 1)[1].split("</svg>", 1)[0]
    assert "EVM (Rootstock)" in picture
    assert "Bitcoin" in picture
    assert "LoanActivated at block 905" in picture
    assert "repayment due (4 left) at block 1005" in picture
    assert "now #1000" in picture


def test_operator_actions_show_in_the_loans_history(operator: Any, settings: Any) -> None:
    loan = loan_factory()
    response = operator.post(
        "/admin/loans/loan/", {"action": "reconcile_now", "_selected_action": [loan.pk]}
    )
    assert response.status_code == 302
    (entry,) = LogEntry.objects.filter(object_id=str(loan.pk))
    assert entry.user.username == "alice"
    assert "operator reconciled" in entry.get_change_message()
    history = operator.get(f"/admin/loans/loan/{loan.pk}/history/").content.decode()
    assert "operator reconciled" in history
    assert AuditEntry.objects.get(loan=loan, action="operator_reconciled").cause_ref == "alice"


def test_the_audit_list_is_newest_first(operator: Any) -> None:
    loan = loan_factory()
    for action in ("first_thing", "second_thing", "third_thing"):
        # Free names (not AuditAction members) so the order shows in the page as written.
        loan_record(loan_id=loan.pk, action=action, cause=AuditCause.OPERATOR, cause_ref="t")  # type: ignore[arg-type]
    html = operator.get("/admin/loans/auditentry/").content.decode()
    assert html.index("third_thing") < html.index("second_thing") < html.index("first_thing")


def test_the_outbox_queue_counts_every_status(operator: Any, book: Any) -> None:
    assert not EvmTransaction.objects.exists()
    queues = {q.name: q for q in dashboard().queues}
    assert queues["EVM lender calls (outbox)"].waiting == 0
    assert {c.key for c in queues["EVM lender calls (outbox)"].counts} >= {"queued", "reverted"}
