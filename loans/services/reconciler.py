"""The reconciler: each open loan against `getLoan` at the safe head and the UTXO set.

What it can re-derive from recorded facts it repairs (the Bitcoin stage from the bitcoin
app's observations); what it cannot (the contract disagrees with every event we indexed) it
raises as an alert for an operator, and resolves the alert once the two agree again.

A pass is bounded: it reads the chains for a batch of loans at a time (one JSON-RPC batch per
node per 500 loans), takes the loans most at risk first (an EVM deadline close, TX_1 not yet
confirmed, a disagreement already alerted), then continues round-robin from a cursor saved
after every batch, and stops after LOAN_RECONCILE_PASS_SECONDS, inside its single-flight
timeout. The next pass picks up where this one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Case, F, IntegerField, Q, QuerySet, When
from django.utils import timezone

from bitcoin.rpc import get_client
from btcloan.alerts.services import alert_raise, alert_resolve
from btcloan.models import Alert
from chainwatch.evm.driver import LoanContracts, LoanState
from chainwatch.models import DeliveryStatus, EvmEvent
from chainwatch.selectors import indexer_status
from loans.chain import evm_safe_head, loan_contracts
from loans.models import CONTRACT_STATUSES, BitcoinStage, Loan, LoanStatus, PassCursor
from loans.selectors import loans_watched
from loans.services.rederive import loan_rederive_bitcoin, loan_rederive_evm
from loans.services.settlement import evm_outcome

# Stages in which an output of the loan must still be unspent in the UTXO set.
ESCROW_UNSPENT = (BitcoinStage.ESCROW_SEEN, BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED)
CURSOR = "reconciler"


@dataclass
class ReconcileSummary:
    checked: int = 0
    agreed: int = 0
    repaired: list[int] = field(default_factory=list)
    alerted: list[int] = field(default_factory=list)
    at_risk: int = 0
    batches: int = 0
    cursor: int = 0  # the last loan id of the round-robin part
    sweep_completed: bool = False  # the round-robin reached the last open loan
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "agreed": self.agreed,
            "repaired": self.repaired,
            "alerted": self.alerted,
            "at_risk": self.at_risk,
            "batches": self.batches,
            "cursor": self.cursor,
            "sweep_completed": self.sweep_completed,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Heads:
    safe: int  # the EVM block to compare at: confirmed and already indexed
    contracts: LoanContracts


# Calls per JSON-RPC batch, and batches in flight at once (per pass, both nodes together).
READ_CHUNK = 500
_READERS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="reconcile-read")
# What the comparisons read of a loan (a full row costs more to build than to compare).
LOAN_FIELDS = (
    "id",
    "chain_id",
    "onchain_id",
    "status",
    "bitcoin_stage",
    "request_block",
    "escrow_txid",
    "escrow_vout",
    "collateral_txid",
)


def _events_in_flight(loan: Loan) -> bool:
    """Events of the loan indexed but not yet applied: a lag, not a disagreement."""
    return EvmEvent.objects.filter(
        chain_id=loan.chain_id,
        loan_id=loan.onchain_id,
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.FAILED),
    ).exists()


def _output_that_must_be_unspent(loan: Loan) -> tuple[str, int] | None:
    if loan.status == LoanStatus.INVALID:
        return None  # the escrow is the borrower's to take back
    if loan.bitcoin_stage in ESCROW_UNSPENT:
        return loan.escrow_txid, loan.escrow_vout
    if loan.bitcoin_stage == BitcoinStage.COLLATERAL_CONFIRMED and loan.collateral_txid:
        return loan.collateral_txid, 1
    return None


def _alert_key(loan_id: int) -> str:
    return f"loan:{loan_id}:reconcile"


def _evm_problem(loan: Loan, state: LoanState | None, safe: int, summary: ReconcileSummary) -> str:
    """'' when the backend agrees with getLoan (or cannot judge yet), else what differs."""
    if state is None:
        return ""  # requested after the safe block: nothing to compare yet
    if loan.status == LoanStatus.DELETED:
        return ""  # the contract forgot it: nothing to compare
    ours = evm_outcome(loan)
    theirs = CONTRACT_STATUSES[state.status] if state.exists else LoanStatus.DELETED
    if _agrees(ours, theirs) or _events_in_flight(loan):
        return ""
    # First from our own recorded events (a lost write, a bad manual edit)...
    if loan_rederive_evm(loan_id=loan.pk, fork_block=safe):
        loan.refresh_from_db()
        ours = evm_outcome(loan)
        summary.repaired.append(loan.pk)
    # ...and what they cannot explain (an event never indexed) goes to an operator.
    return "" if _agrees(ours, theirs) else f"contract says {theirs}, the backend says {ours}"


# An invalid loan agrees with a contract that still holds (or forgot) the mere request; one the
# contract took further (offered, active...) is a disagreement an operator must see.
INVALID_AGREES = frozenset({LoanStatus.REQUESTED, LoanStatus.DELETED})


def _agrees(ours: str, theirs: str) -> bool:
    return ours == theirs or (ours == LoanStatus.INVALID and theirs in INVALID_AGREES)


def _bitcoin_problem(loan: Loan, spent: bool, summary: ReconcileSummary) -> str:
    if not spent:
        return ""
    # A spend we missed: the bitcoin app's observations may already tell which.
    if loan_rederive_bitcoin(loan_id=loan.pk, cause_ref="reconciler"):
        summary.repaired.append(loan.pk)
        return ""
    unspent = _output_that_must_be_unspent(loan)
    assert unspent is not None
    return f"output {unspent[0]}:{unspent[1]} is spent, unobserved"


def _read_chains(loans: list[Loan], heads: _Heads) -> tuple[dict[int, LoanState], set[int]]:
    """getLoan of the loans requested by the safe block, and which of the loans' outputs that
    must be unspent are spent: JSON-RPC batches of READ_CHUNK calls, a few in flight at once
    on each node, so a remote node's round trips overlap instead of adding up."""
    contracts = heads.contracts
    ids = [int(loan.onchain_id) for loan in loans if loan.request_block <= heads.safe]
    outputs = {loan.pk: o for loan in loans if (o := _output_that_must_be_unspent(loan))}
    points = list(outputs.values())
    client = get_client()
    evm = [
        _READERS.submit(contracts.get_loans, ids[i : i + READ_CHUNK], block=heads.safe)
        for i in range(0, len(ids), READ_CHUNK)
    ]
    btc = [
        _READERS.submit(client.tx_outs, points[i : i + READ_CHUNK])
        for i in range(0, len(points), READ_CHUNK)
    ]
    states: dict[int, LoanState] = {}
    for future in evm:
        states.update(future.result())
    found = [utxo for future in btc for utxo in future.result()]
    spent = {pk for pk, utxo in zip(outputs, found, strict=True) if utxo is None}
    return states, spent


def _reconcile_batch(loans: list[Loan], heads: _Heads, summary: ReconcileSummary) -> None:
    """One batch: every chain read first (batched, overlapping), then the comparisons;
    alerts are written only for loans that disagree or stopped disagreeing."""
    states, spent = _read_chains(loans, heads)
    keys = {_alert_key(loan.pk) for loan in loans}
    alerted = set(
        Alert.objects.filter(key__in=keys, resolved_at__isnull=True).values_list("key", flat=True)
    )
    for loan in loans:
        summary.checked += 1
        state = states.get(int(loan.onchain_id)) if loan.request_block <= heads.safe else None
        problems = [
            p
            for p in (
                _evm_problem(loan, state, heads.safe, summary),
                _bitcoin_problem(loan, loan.pk in spent, summary),
            )
            if p
        ]
        key = _alert_key(loan.pk)
        if problems:
            alert_raise(
                key=key,
                severity="critical",
                title=f"loan {loan.onchain_id} disagrees with the chains",
                details={"problems": problems, "safe_block": heads.safe},
                loan_ref=loan.pk,
            )
            summary.alerted.append(loan.pk)
            continue
        if key in alerted:
            alert_resolve(key=key)
        summary.agreed += 1


def loans_at_risk(*, evm_head: int, limit: int) -> QuerySet[Loan]:
    """Open loans whose reconciliation matters most now, soonest EVM deadline first: an offer,
    a repayment or its acceptance due within LOAN_RECONCILE_RISK_BLOCKS, TX_1 broadcast but
    not confirmed, or a disagreement already alerted."""
    deadline = Case(
        When(status=LoanStatus.OFFERED, then=F("offer_block") + F("timelock_borrower")),
        When(status=LoanStatus.ACTIVE, then=F("activation_block") + F("loan_duration")),
        When(
            status=LoanStatus.REPAYMENT_IN_PROGRESS,
            then=F("repayment_block") + F("timelock_lender"),
        ),
        default=None,
        output_field=IntegerField(),
    )
    alerted = Alert.objects.filter(
        key__startswith="loan:", key__endswith=":reconcile", resolved_at__isnull=True
    ).values_list("loan_ref", flat=True)
    horizon = evm_head + int(settings.LOAN_RECONCILE_RISK_BLOCKS)
    return (
        loans_watched()
        .only(*LOAN_FIELDS)
        .annotate(evm_deadline=deadline)
        .filter(
            Q(evm_deadline__lte=horizon)
            | Q(bitcoin_stage=BitcoinStage.COLLATERAL_LOCKED)
            | Q(id__in=[int(ref) for ref in alerted if ref.isdigit()])
        )
        .order_by(F("evm_deadline").asc(nulls_last=True), "id")[:limit]
    )


def _round_robin(cursor: PassCursor, batch: int) -> Iterator[list[Loan]]:
    """Batches of open loans after the cursor, in id order, wrapping once past the end (a
    sweep done). The caller saves the cursor (`_advance`) after each batch it finished."""
    start = cursor.last_loan_id
    position, wrapped = start, False
    while True:
        rows = loans_watched().only(*LOAN_FIELDS).filter(id__gt=position)
        if wrapped:
            rows = rows.filter(id__lte=start)
        loans = list(rows.order_by("id")[:batch])
        if loans:
            yield loans
            position = loans[-1].pk
            continue
        if wrapped:
            return
        _sweep_done(cursor)
        if start == 0:
            return
        position, wrapped = 0, True


def _advance(cursor: PassCursor, position: int) -> None:
    PassCursor.objects.filter(pk=cursor.pk).update(last_loan_id=position, updated_at=timezone.now())
    cursor.last_loan_id = position


def _sweep_done(cursor: PassCursor) -> None:
    """The round-robin reached the end of the open loans: one full sweep done."""
    now = timezone.now()
    seconds = (now - cursor.sweep_started_at).total_seconds() if cursor.sweep_started_at else None
    PassCursor.objects.filter(pk=cursor.pk).update(
        last_loan_id=0,
        sweeps=F("sweeps") + 1,
        sweep_started_at=now,
        last_sweep_seconds=seconds,
        updated_at=now,
    )
    cursor.last_loan_id = 0


def _heads() -> _Heads:
    contracts = loan_contracts()
    # Compare no further than the indexer has read: an event confirmed on chain but not yet
    # indexed is a lag (the next poll applies it), not a disagreement to page anyone about.
    indexed = indexer_status(chain_id=contracts.chain_id).indexed_block
    return _Heads(
        safe=min(evm_safe_head(), -1 if indexed is None else indexed), contracts=contracts
    )


def reconcile_loans(*, loan_ids: list[int]) -> ReconcileSummary:
    """These watched loans now (an operator's request), whatever the cursor says."""
    started = time.monotonic()
    summary = ReconcileSummary()
    heads = _heads()
    chosen = loans_watched().only(*LOAN_FIELDS).filter(pk__in=loan_ids).order_by("id")
    batch = int(settings.LOAN_RECONCILE_BATCH)
    loans = list(chosen)
    for start in range(0, len(loans), batch):
        _reconcile_batch(loans[start : start + batch], heads, summary)
        summary.batches += 1
    summary.seconds = time.monotonic() - started
    return summary


def reconcile_run(*, budget_seconds: float | None = None) -> ReconcileSummary:
    """One bounded pass: the loans at risk, then round-robin from the saved cursor until every
    open loan was seen once or the time budget is spent."""
    started = time.monotonic()
    budget = (
        float(settings.LOAN_RECONCILE_PASS_SECONDS) if budget_seconds is None else budget_seconds
    )
    batch = int(settings.LOAN_RECONCILE_BATCH)
    summary = ReconcileSummary()
    heads = _heads()
    risky = list(loans_at_risk(evm_head=heads.safe, limit=batch))
    if risky:
        summary.at_risk = len(risky)
        _reconcile_batch(risky, heads, summary)
        summary.batches += 1
    done = {loan.pk for loan in risky}
    cursor, _ = PassCursor.objects.get_or_create(
        name=CURSOR, defaults={"sweep_started_at": timezone.now()}
    )
    slowest = 0.0
    for loans in _round_robin(cursor, batch):
        began = time.monotonic()
        _reconcile_batch([loan for loan in loans if loan.pk not in done], heads, summary)
        _advance(cursor, loans[-1].pk)
        summary.batches += 1
        slowest = max(slowest, time.monotonic() - began)
        # Stop before a batch as slow as the slowest so far would overrun the budget.
        if time.monotonic() - started + slowest > budget:
            break
    else:
        summary.sweep_completed = True
    summary.cursor = cursor.last_loan_id
    summary.seconds = time.monotonic() - started
    return summary
