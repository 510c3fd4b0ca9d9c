"""The operators' dashboard, as figures: the loan book by status and Bitcoin stage, the money at
stake on each chain, the next deadlines with their margin, open alerts, the watchers' lag and
the queues of what the desk still has to send. Reads only (the lag asks each node its head,
with the health probes' timeout); loans/admin_views.py draws it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Q, Sum

from bitcoin import metrics as bitcoin_metrics
from bitcoin.models import BitcoinFact, BitcoinTransaction, TxStatus
from btcloan.models import SEVERITY_RANK, Alert, AlertSeverity
from chainwatch import metrics as chainwatch_metrics
from chainwatch.models import DeliveryStatus, EvmEvent, EvmTransaction, OutboxStatus
from loans.charts import RISK_COLOURS, Lane, Mark
from loans.deadlines import Chain, Deadline, loan_deadlines
from loans.models import (
    ApprovalStatus,
    BitcoinStage,
    LenderApproval,
    Loan,
    LoanStatus,
    LoanWorkflow,
    WorkflowStatus,
)
from loans.selectors import known_heads, loan_timeline, loans_open

DEADLINES_SHOWN = 20

# Money the lender has out: lent and not yet repaid (a repayment attempt is not yet accepted).
OUTSTANDING = (LoanStatus.ACTIVE, LoanStatus.REPAYMENT_IN_PROGRESS)
IN_ESCROW = (BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED)
AS_COLLATERAL = (BitcoinStage.COLLATERAL_LOCKED, BitcoinStage.COLLATERAL_CONFIRMED)


class Risk(enum.StrEnum):
    PASSED = "passed"
    CRITICAL = "critical"
    WARNING = "warning"
    OK = "ok"


def _alert_margin(chain: str) -> int:
    """The margin (in the chain's blocks) below which the watchdog alerts."""
    if chain == Chain.EVM:
        return int(settings.LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS)
    return int(settings.LOAN_ALERT_TX1_MARGIN_BLOCKS)


def margin_risk(*, chain: str, blocks_left: int) -> Risk:
    """Passed; inside the alert margin; inside three times it; or comfortable."""
    limit = _alert_margin(chain)
    if blocks_left < 0:
        return Risk.PASSED
    if blocks_left <= limit:
        return Risk.CRITICAL
    if blocks_left <= 3 * limit:
        return Risk.WARNING
    return Risk.OK


@dataclass(frozen=True)
class DeadlineRow:
    loan_id: int
    onchain_id: int
    status: str
    deadline: Deadline

    @property
    def risk(self) -> Risk:
        return margin_risk(chain=self.deadline.chain, blocks_left=self.deadline.blocks_left)


@dataclass(frozen=True)
class Count_:
    key: str
    label: str
    count: int


@dataclass(frozen=True)
class Lag:
    chain: str
    blocks: int | None  # None: unknown (not run yet, or the node did not answer)
    detail: str
    warn: int
    critical: int

    @property
    def risk(self) -> Risk:
        if self.blocks is None or self.blocks > self.critical:
            return Risk.CRITICAL
        return Risk.WARNING if self.blocks > self.warn else Risk.OK


@dataclass(frozen=True)
class Queue:
    name: str
    counts: list[Count_]
    waiting: int  # rows the desk still has to send or follow
    attention: int  # rows an operator should look at


@dataclass(frozen=True)
class Dashboard:
    by_status: list[Count_]
    by_stage: list[Count_]
    loans_total: int
    escrow_sats: int
    collateral_sats: int
    lent_wei: int
    outstanding_wei: int
    defaulted_wei: int
    evm_head: int | None
    btc_head: int | None
    deadlines: list[DeadlineRow]
    alerts: list[Alert]
    lags: list[Lag]
    queues: list[Queue]
    held_approvals: int
    failed_workflows: int


def _counts(field: str, choices: Iterable[tuple[str, str]]) -> list[Count_]:
    found = dict(Loan.objects.values_list(field).annotate(n=Count("id")).values_list(field, "n"))
    return [Count_(value, str(label), int(found.get(value, 0))) for value, label in choices]


def _sum(queryset: object, field: str) -> int:
    total = queryset.aggregate(total=Sum(field))["total"]  # type: ignore[attr-defined]
    return int(total or 0)


def next_deadlines(
    *, limit: int = DEADLINES_SHOWN
) -> tuple[list[DeadlineRow], int | None, int | None]:
    """The open loans' deadlines on either chain, fewest blocks left first (passed ones first of
    all), by the newest blocks the watchers have seen; and those heads."""
    chain_id = int(settings.EVM_CHAIN_ID)
    evm, btc = known_heads(chain_id=chain_id)
    if evm is None:
        return [], evm, btc
    rows = [
        DeadlineRow(loan.pk, int(loan.onchain_id), loan.status, deadline)
        for loan in loans_open().filter(chain_id=chain_id)
        for deadline in loan_deadlines(loan, evm_head=evm, btc_head=btc)
    ]
    rows.sort(key=lambda row: (row.deadline.blocks_left, row.loan_id))
    return rows[:limit], evm, btc


def _evm_lag() -> Lag:
    def lag(blocks: int | None, detail: str) -> Lag:
        return Lag(
            "EVM indexer",
            blocks,
            detail,
            settings.HEALTH_INDEXER_LAG_WARN_BLOCKS,
            settings.HEALTH_INDEXER_LAG_CRITICAL_BLOCKS,
        )

    try:
        found = chainwatch_metrics.indexer_lag()
    except chainwatch_metrics.NODE_ERRORS as exc:
        return lag(None, f"node did not answer ({type(exc).__name__})")
    if found is None:
        return lag(None, "has not run yet")
    return lag(
        found.behind,
        f"head {found.head}, indexed {found.indexed} ({found.confirmations} confirmations waited)",
    )


def _bitcoin_lag() -> Lag:
    def lag(blocks: int | None, detail: str) -> Lag:
        return Lag(
            "Bitcoin scanner",
            blocks,
            detail,
            settings.HEALTH_SCANNER_LAG_WARN_BLOCKS,
            settings.HEALTH_SCANNER_LAG_CRITICAL_BLOCKS,
        )

    try:
        found = bitcoin_metrics.scanner_lag()
    except bitcoin_metrics.NODE_ERRORS as exc:
        return lag(None, f"node did not answer ({type(exc).__name__})")
    if found is None:
        return lag(None, "has not run yet")
    return lag(found.lag, f"tip {found.tip}, scanned {found.scanned}")


def _queue(
    name: str, counts: dict[str, int], waiting: Iterable[str], attention: Iterable[str]
) -> Queue:
    return Queue(
        name,
        [Count_(status, status.replace("_", " "), n) for status, n in counts.items()],
        sum(counts.get(s, 0) for s in waiting),
        sum(counts.get(s, 0) for s in attention),
    )


def _by_status(
    model: type[EvmTransaction] | type[BitcoinTransaction] | type[EvmEvent],
) -> dict[str, int]:
    rows = model.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
    return {str(status): int(n) for status, n in rows}


def queues() -> list[Queue]:
    evm_outbox = _by_status(EvmTransaction)
    btc_outbox = _by_status(BitcoinTransaction)
    events = _by_status(EvmEvent)
    facts = BitcoinFact.objects.filter(delivered_at__isnull=True).aggregate(
        pending=Count("id"), failed=Count("id", filter=Q(attempts__gt=0))
    )
    o, t, d = OutboxStatus, TxStatus, DeliveryStatus
    return [
        _queue(
            "EVM lender calls (outbox)",
            {s: evm_outbox.get(s, 0) for s in o.values},
            (o.QUEUED, o.SIGNED, o.SENT, o.MINED, o.CANCELLING),
            (o.REVERTED, o.FAILED, o.REFUSED),
        ),
        _queue(
            "Bitcoin transactions",
            {s: btc_outbox.get(s, 0) for s in t.values},
            (t.BUILT, t.SIGNED, t.BROADCAST, t.IN_MEMPOOL),
            (t.FAILED, t.REPLACED),
        ),
        _queue(
            "EVM events to hand on",
            {s: events.get(s, 0) for s in (d.PENDING, d.FAILED)},
            (d.PENDING,),
            (d.FAILED,),
        ),
        _queue(
            "Bitcoin facts to hand on",
            {"pending": int(facts["pending"]), "retrying": int(facts["failed"])},
            ("pending",),
            ("retrying",),
        ),
    ]


def open_alerts(limit: int = 20) -> list[Alert]:
    """Unresolved alerts, the most severe first, then the most recent."""
    found = Alert.objects.filter(resolved_at__isnull=True).order_by("-last_seen_at")
    ranked = sorted(found, key=lambda a: -SEVERITY_RANK[AlertSeverity(a.severity)])
    return ranked[:limit]


def dashboard() -> Dashboard:
    deadlines, evm_head, btc_head = next_deadlines()
    return Dashboard(
        by_status=_counts("status", LoanStatus.choices),
        by_stage=_counts("bitcoin_stage", BitcoinStage.choices),
        loans_total=Loan.objects.count(),
        escrow_sats=_sum(Loan.objects.filter(bitcoin_stage__in=IN_ESCROW), "escrow_value_sats"),
        collateral_sats=_sum(
            Loan.objects.filter(bitcoin_stage__in=AS_COLLATERAL), "collateral_value_sats"
        ),
        lent_wei=_sum(Loan.objects.filter(activation_block__isnull=False), "amount_wei"),
        outstanding_wei=_sum(Loan.objects.filter(status__in=OUTSTANDING), "amount_wei"),
        defaulted_wei=_sum(Loan.objects.filter(status=LoanStatus.DEFAULTED), "amount_wei"),
        evm_head=evm_head,
        btc_head=btc_head,
        deadlines=deadlines,
        alerts=list(
            Alert.objects.filter(resolved_at__isnull=True).order_by("severity", "-last_seen_at")[
                :20
            ]
        ),
        lags=[_evm_lag(), _bitcoin_lag()],
        queues=queues(),
        held_approvals=LenderApproval.objects.filter(status=ApprovalStatus.PENDING).count(),
        failed_workflows=LoanWorkflow.objects.filter(status=WorkflowStatus.FAILED).count(),
    )


# The lanes' colours: EVM events, Bitcoin observations.
LANE_COLOURS = {"evm": "#7c3aed", "bitcoin": "#ea580c"}


def loan_lanes(*, loan: Loan) -> list[Lane]:
    """The loan on both chains for its timeline picture: each chain's events and transactions
    at their blocks (a Bitcoin one not yet in a block at the tip), the head, and the deadlines
    ahead coloured by their margin."""
    evm_head, btc_head = known_heads(chain_id=loan.chain_id)
    marks: dict[str, dict[tuple[str, int], Mark]] = {"evm": {}, "bitcoin": {}}
    entries = [e for e in loan_timeline(loan=loan) if e.source in marks]
    # The desk's own actions are in the table below the picture; a transaction seen in the
    # mempool and then in a block is drawn at its block only.
    mined = {(e.source, e.ref) for e in entries if e.block is not None}
    for entry in entries:
        if entry.block is None and (entry.source, entry.ref) in mined:
            continue
        purpose = entry.details.get("purpose") or entry.details.get("path")
        label = f"{entry.what} ({purpose})" if purpose else entry.what
        pending = entry.block is None
        block = (btc_head if entry.source == "bitcoin" else evm_head) if pending else entry.block
        if block is None:
            continue
        kind = "pending" if pending else "event"
        # One mark per thing and block: confirmations 1, 2, ... repeat the same fact.
        marks[entry.source][(label, int(block))] = Mark(
            int(block), label, kind, LANE_COLOURS[entry.source]
        )
    if evm_head is not None:
        for deadline in loan_deadlines(loan, evm_head=evm_head, btc_head=btc_head):
            risk = margin_risk(chain=deadline.chain, blocks_left=deadline.blocks_left)
            label = f"{deadline.kind.replace('_', ' ')} ({deadline.blocks_left} left)"
            marks[deadline.chain][(label, deadline.block)] = Mark(
                deadline.block, label, "deadline", RISK_COLOURS[risk]
            )
    return [
        Lane("EVM (Rootstock)", evm_head, list(marks["evm"].values())),
        Lane("Bitcoin", btc_head, list(marks["bitcoin"].values())),
    ]
