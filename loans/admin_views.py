"""The operators' dashboard page, beside the admin and behind its login (staff, and the
permission to view loans): figures, charts and tables from loans/dashboard.py."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.safestring import SafeString

from loans.charts import RISK_COLOURS, Bar, Margin, bar_chart, margin_chart
from loans.dashboard import Count_, Dashboard, DeadlineRow, Queue, dashboard

# Colours of the loan book's bars: settled, under way, and gone wrong.
STATUS_COLOURS = {
    "closed": "#6b7280",
    "invalid": "#7f1d1d",
    "deleted": "#9ca3af",
    "defaulted": "#dc2626",
    "refunded_to_borrower": "#d97706",
    "refunded_to_lender": "#d97706",
}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    raw: int  # sats or wei, for machines (and the browser test)
    text: str


def btc_text(sats: int) -> str:
    return f"{Decimal(sats) / 10**8:,.8f} BTC"


def rbtc_text(wei: int) -> str:
    return f"{Decimal(wei) / 10**18:,.8f} rBTC"


def figures(d: Dashboard) -> list[Figure]:
    sats = (
        ("collateral_sats", "BTC locked as collateral", d.collateral_sats),
        ("escrow_sats", "BTC in escrow (before TX_1)", d.escrow_sats),
    )
    wei = (
        ("lent_wei", "rBTC lent (every activated loan)", d.lent_wei),
        ("outstanding_wei", "rBTC outstanding (not yet repaid)", d.outstanding_wei),
        ("defaulted_wei", "rBTC in defaulted loans", d.defaulted_wei),
    )
    return [Figure(key, label, raw, btc_text(raw)) for key, label, raw in sats] + [
        Figure(key, label, raw, rbtc_text(raw)) for key, label, raw in wei
    ]


def _bars(counts: list[Count_]) -> list[Bar]:
    return [Bar(c.label, c.count, STATUS_COLOURS.get(c.key, "#2563eb")) for c in counts]


def _queue_chart(queue: Queue) -> SafeString:
    bars = [
        Bar(c.label, c.count, RISK_COLOURS["critical"] if c.key in _ATTENTION else "#2563eb")
        for c in queue.counts
    ]
    title = f"{queue.name}: {queue.waiting} in flight, {queue.attention} to look at"
    return bar_chart(bars, title=title)


# Statuses drawn red in the queues: an operator should look at those rows.
_ATTENTION = frozenset({"reverted", "failed", "refused", "replaced", "retrying"})


def _deadline_label(row: DeadlineRow) -> str:
    return f"#{row.onchain_id} {row.deadline.kind.replace('_', ' ')}"


def dashboard_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("loans.view_loan"):
        raise PermissionDenied
    d = dashboard()
    margins = [
        Margin(
            f"#{r.onchain_id} {r.deadline.kind.replace('_', ' ')}", r.deadline.blocks_left, r.risk
        )
        for r in d.deadlines
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "d": d,
        "figures": figures(d),
        "status_chart": bar_chart(_bars(d.by_status), title="By status"),
        "stage_chart": bar_chart(_bars(d.by_stage), title="By Bitcoin stage"),
        "margin_chart": margin_chart(margins, title="Blocks left (coloured by risk)"),
        "queue_charts": [_queue_chart(q) for q in d.queues],
    }
    return TemplateResponse(request, "admin/loans/dashboard.html", context)
