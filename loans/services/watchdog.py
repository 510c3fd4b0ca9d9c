"""The timelock watchdog: every open loan's deadlines on both chains, acted on in time.

It reads both heads once, then decides what is due for the loans that need a look: withdraw
an expired offer, mark a default, sweep a matured collateral, (re)try the steps that must
happen (build TX_1, sign and send it, accept a repayment) and alert while a safety margin is
being eaten. Every action it takes is idempotent, so running it often, or twice at once, is
harmless.

A pass is incremental. `LoanWatch` keeps what it last saw of each loan; a loan is looked at
again only when its row changed (a trigger bumps `Loan.revision` on every UPDATE), when a head
reaches the block at which a deadline passes or an alert threshold is crossed, on each new
Bitcoin block while its deposit is awaited, or when a step it sent is still due after
LOAN_WATCHDOG_REDRIVE_SECONDS (a task lost with its worker), backing off. An alert row is
written only when the alert's state changes. With nothing changed a pass is one query.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from btcloan.alerts.services import alert_raise, alert_resolve
from btcloan.models import SEVERITY_RANK, Alert, AlertSeverity
from loans.chain import bitcoin_head, evm_head
from loans.deadlines import Chain, Deadline, DeadlineKind, loan_deadlines
from loans.models import (
    AuditCause,
    BitcoinStage,
    ContractFlavour,
    IntakeStatus,
    Loan,
    LoanRequestIntake,
    LoanStatus,
    LoanWatch,
)
from loans.next_steps import NextStep, next_step_enqueue
from loans.policy import LenderAction
from loans.selectors import loans_open, loans_watched
from loans.services.lender import lender_action_request
from loans.services.settlement import evm_outcome

logger = logging.getLogger(__name__)

# The redrive wait doubles after each redrive of the same steps, up to this factor.
MAX_REDRIVE_BACKOFF = 32


@dataclass
class WatchdogSummary:
    loans: int = 0  # looked at in this pass
    open_loans: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    alerts: int = 0  # alert rows written (raised, escalated or resolved)

    def as_dict(self) -> dict[str, Any]:
        return {
            "loans": self.loans,
            "open_loans": self.open_loans,
            "actions": dict(self.actions),
            "alerts": self.alerts,
        }


# Alert when the party that must act is the lender and fewer blocks than this are left.
MARGIN_ALERTS = {
    DeadlineKind.REPAYMENT_ACCEPTANCE: "LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS",
    DeadlineKind.ESCROW_EXIT: "LOAN_ALERT_TX1_MARGIN_BLOCKS",
}


@dataclass(frozen=True)
class _Heads:
    evm: int
    btc: int
    now: datetime


def loans_to_look_at(*, evm: int, btc: int, now: datetime) -> QuerySet[Loan]:
    """Open loans (and invalid ones the contract may hold open: `loans_watched`) never looked
    at, changed since, or woken by a head or the redrive clock."""
    return (
        loans_watched()
        .filter(
            Q(watch__isnull=True)
            | Q(watch__seen_revision__lt=F("revision"))
            | Q(watch__wake_evm_block__lte=evm)
            | Q(watch__wake_btc_block__lte=btc)
            | Q(watch__redrive_at__lte=now)
        )
        .select_related("watch")
    )


def watchdog_run() -> WatchdogSummary:
    summary = WatchdogSummary()
    heads = _Heads(evm=evm_head(), btc=bitcoin_head(), now=timezone.now())
    # Before the loans are picked: a changed duration bumps their revision.
    summary.actions["loan_duration_followed"] += _follow_global_duration()
    _redrive_intakes(heads.now, summary)
    loans = list(loans_to_look_at(evm=heads.evm, btc=heads.btc, now=heads.now))
    open_alerts = _open_margin_alerts(loans)
    seen: list[LoanWatch] = []
    for loan in loans:
        summary.loans += 1
        deadlines = {
            d.kind: d for d in loan_deadlines(loan, evm_head=heads.evm, btc_head=heads.btc)
        }
        for deadline in deadlines.values():
            summary.alerts += _margin_alert(loan, deadline, open_alerts)
        summary.alerts += _resolve_vanished(loan, deadlines, open_alerts)
        due = _due_actions(loan, deadlines)
        for action in due:
            summary.actions[_take(loan, action)] += 1
        seen.append(_remember(loan, deadlines, due, heads))
    LoanWatch.objects.bulk_create(
        seen,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["loan"],
        update_fields=[*WATCH_FIELDS, "updated_at"],
    )
    summary.open_loans = loans_open().count()
    return summary


def loan_watch_reset(*, loan_ids: list[int]) -> int:
    """Forget what the watchdog saw of these loans: its next pass looks at them afresh (an
    operator's "run the watchdog now")."""
    deleted, _ = LoanWatch.objects.filter(loan_id__in=loan_ids).delete()
    return deleted


def _redrive_intakes(now: datetime, summary: WatchdogSummary) -> None:
    """A request whose intake task was lost (a worker died) is read again; its first task is
    sent by the event's handler on commit, so only ones pending for a while are redriven."""
    stale = now - timedelta(seconds=float(settings.LOAN_WATCHDOG_REDRIVE_SECONDS))
    pending = LoanRequestIntake.objects.exclude(status=IntakeStatus.DONE).filter(
        updated_at__lte=stale
    )
    for intake_id in pending.values_list("pk", flat=True):
        LoanRequestIntake.objects.filter(pk=intake_id).update(updated_at=now)
        next_step_enqueue(step=NextStep.READ_REQUEST, target_id=intake_id)
        summary.actions["intake_loan_request"] += 1


WATCH_FIELDS = [
    "seen_revision",
    "wake_evm_block",
    "wake_btc_block",
    "due_steps",
    "redrive_at",
    "redrives",
]


def _remember(
    loan: Loan, deadlines: dict[DeadlineKind, Deadline], due: list[Action], heads: _Heads
) -> LoanWatch:
    """What this pass saw, and when the loan needs a look even if it does not change."""
    steps = [a.value for a in due]
    previous: LoanWatch | None = getattr(loan, "watch", None)
    redrives = 0
    if previous is not None and steps and previous.due_steps == steps:
        redrives = previous.redrives + 1  # the same steps again: back off
    redrive_at = None
    if steps:
        wait = float(settings.LOAN_WATCHDOG_REDRIVE_SECONDS)
        redrive_at = heads.now + timedelta(seconds=wait * min(2**redrives, MAX_REDRIVE_BACKOFF))
    awaiting_deposit = loan.status == LoanStatus.REQUESTED and loan.bitcoin_stage in (
        BitcoinStage.AWAITING_ESCROW,
        BitcoinStage.ESCROW_SEEN,
    )
    return LoanWatch(
        loan=loan,
        seen_revision=loan.revision,
        wake_evm_block=_wake(deadlines, Chain.EVM, heads.evm),
        # A deposit is looked for in the UTXO set once per Bitcoin block.
        wake_btc_block=heads.btc + 1
        if awaiting_deposit
        else _wake(deadlines, Chain.BITCOIN, heads.btc),
        due_steps=steps,
        redrive_at=redrive_at,
        redrives=redrives,
        updated_at=heads.now,
    )


def _wake(deadlines: dict[DeadlineKind, Deadline], chain: Chain, head: int) -> int | None:
    """The next head at which something about these deadlines changes: one passes (from
    `block` on, blocks_left < 0), its remedy opens (from `remedy_block` - 1 on) or an alert
    threshold is crossed (blocks_left < t from head block - t on, critical at t // 2)."""
    heads = []
    for deadline in deadlines.values():
        if deadline.chain != chain:
            continue
        # It passes, and the other side's remedy opens (later on the seed's contract).
        heads += [deadline.block, deadline.remedy_block - 1]
        setting = MARGIN_ALERTS.get(deadline.kind)
        if setting is not None:
            threshold = int(getattr(settings, setting))
            heads += [deadline.block - threshold, deadline.block - threshold // 2]
    return min((h for h in heads if h > head), default=None)


def _follow_global_duration() -> int:
    """Seed flavour: re-read the global loanDuration (at the confirmed head, as events are)
    so a change whose event was missed or came before a loan's intake is still followed."""
    from loans.chain import evm_safe_head, global_loan_duration, loan_contracts
    from loans.services.parameters import READS_DURATION, loans_duration_follow

    live = Loan.objects.filter(contract_flavour=ContractFlavour.SEED, status__in=READS_DURATION)
    if not live.exists():
        return 0
    contracts = loan_contracts()
    return loans_duration_follow(
        chain_id=contracts.chain_id,
        contract_address=str(contracts.loan.address),
        loan_duration=global_loan_duration(block=evm_safe_head()),
        cause=AuditCause.WATCHDOG,
    )


# What the watchdog may do for a loan: a lender EVM action, or a next step.
Action = LenderAction | NextStep

# The names the summary (and the metrics built on it) have always used: the task names.
SUMMARY_NAMES = {
    NextStep.READ_REQUEST: "intake_loan_request",
    NextStep.SET_UP_ESCROW: "set_up_escrow",
    NextStep.OBSERVE_ESCROW: "prepare_collateral_lock",
    NextStep.EVALUATE_OFFER: "evaluate_offer",
    NextStep.LOCK_COLLATERAL: "lock_collateral",
    NextStep.ACCEPT_REPAYMENT: "accept_repayment",
    NextStep.SWEEP_COLLATERAL: "sweep_collateral",
    NextStep.DELETE_LOAN: "delete_completed_loan",
    NextStep.CHECK_ACCOUNTING: "check_loan_accounting",
    NextStep.BROADCAST: "broadcast",
    NextStep.SEND_LENDER_CALL: "send_evm_transaction",
}


def _requested_step(loan: Loan) -> NextStep | None:
    """What a requested loan waits for on the lender's side."""
    if not loan.preimage_hash_lender:
        return NextStep.SET_UP_ESCROW  # its task was lost before it fixed H_L
    if loan.collateral_lock_feerate is None or loan.bitcoin_stage in (
        BitcoinStage.AWAITING_ESCROW,
        BitcoinStage.ESCROW_SEEN,
    ):
        # The deposit's stage from the UTXO set: the scanner only sees new blocks, so a
        # deposit confirmed before the request (or re-derived after a reorg) shows here.
        return NextStep.OBSERVE_ESCROW
    if loan.bitcoin_stage in (BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED):
        return NextStep.EVALUATE_OFFER
    return None


def _due_actions(loan: Loan, deadlines: dict[DeadlineKind, Deadline]) -> list[Action]:
    status, stage = loan.status, loan.bitcoin_stage
    due: list[Action] = []
    if status == LoanStatus.REQUESTED:
        step = _requested_step(loan)
        if step is not None:
            due.append(step)
    elif status == LoanStatus.OFFERED:
        expiry = deadlines.get(DeadlineKind.OFFER_EXPIRY)
        if expiry is not None and expiry.remedy_open:
            due.append(LenderAction.WITHDRAW_OFFER)
    elif status == LoanStatus.ACTIVE:
        if stage == BitcoinStage.PRESIGNED:
            due.append(NextStep.LOCK_COLLATERAL)
        repayment = deadlines.get(DeadlineKind.REPAYMENT_DUE)
        if repayment is not None and repayment.remedy_open:
            due.append(LenderAction.MARK_DEFAULT)
    elif status == LoanStatus.REPAYMENT_IN_PROGRESS:
        due.append(NextStep.ACCEPT_REPAYMENT)
    sweep = deadlines.get(DeadlineKind.COLLATERAL_SWEEP)
    if sweep is not None and sweep.remedy_open and _lender_may_sweep(loan):
        due.append(NextStep.SWEEP_COLLATERAL)
    return due


def _take(loan: Loan, action: Action) -> str:
    """Do one due action; returns its name for the summary."""
    if isinstance(action, LenderAction):
        outcome = lender_action_request(loan_id=loan.pk, action=action, cause=AuditCause.WATCHDOG)
        return f"{action.value}:{outcome}"
    next_step_enqueue(step=action, target_id=loan.pk)
    return SUMMARY_NAMES[action]


def _lender_may_sweep(loan: Loan) -> bool:
    """After a default or a refused repayment the collateral is the lender's. A repaid loan's
    collateral is the borrower's even when they are late to release it: never swept."""
    return evm_outcome(loan) in (LoanStatus.DEFAULTED, LoanStatus.REFUNDED_TO_BORROWER)


def _open_margin_alerts(loans: list[Loan]) -> dict[str, str]:
    """{key: severity} of the open margin alerts of these loans, in one query."""
    keys = [_alert_key(loan, kind) for loan in loans for kind in MARGIN_ALERTS]
    rows = Alert.objects.filter(key__in=keys, resolved_at__isnull=True)
    return dict(rows.values_list("key", "severity"))


def _alert_key(loan: Loan, kind: DeadlineKind) -> str:
    return f"loan:{loan.pk}:{kind.value}"


def _resolve_vanished(
    loan: Loan, deadlines: dict[DeadlineKind, Deadline], open_alerts: dict[str, str]
) -> int:
    """A margin alert whose deadline no longer applies (the loan moved on) is resolved."""
    written = 0
    for kind in MARGIN_ALERTS:
        key = _alert_key(loan, kind)
        if kind not in deadlines and key in open_alerts:
            written += int(alert_resolve(key=key))
    return written


# While the loan is in one of these, TX_1 must confirm before the borrower can exit.
TX1_OWED = frozenset(
    {
        LoanStatus.OFFERED,
        LoanStatus.ACTIVE,
        LoanStatus.REPAYMENT_IN_PROGRESS,
        LoanStatus.DEFAULTED,
        LoanStatus.REFUNDED_TO_BORROWER,
    }
)


def _margin_alert(loan: Loan, deadline: Deadline, open_alerts: dict[str, str]) -> int:
    """Raise, escalate or resolve the deadline's margin alert when its state changed; returns
    the number of alert rows written (0 when the open alert already says it)."""
    setting = MARGIN_ALERTS.get(deadline.kind)
    if setting is None:
        return 0
    key = _alert_key(loan, deadline.kind)
    current = open_alerts.get(key)
    threshold = int(getattr(settings, setting))
    # Before an offer nothing is lent, and after a withdrawn offer or a repayment nothing is
    # owed: an escrow nearing its exit is then the borrower's business (TX_1 is never sent).
    at_risk = deadline.kind != DeadlineKind.ESCROW_EXIT or evm_outcome(loan) in TX1_OWED
    if deadline.blocks_left >= threshold or not at_risk:
        return int(current is not None and alert_resolve(key=key))
    severity = "critical" if deadline.blocks_left < threshold // 2 else "warning"
    if (
        current is not None
        and SEVERITY_RANK[AlertSeverity(current)] >= SEVERITY_RANK[AlertSeverity(severity)]
    ):
        return 0
    alert_raise(
        key=key,
        severity=severity,
        title=f"loan {loan.onchain_id}: {deadline.action}: {deadline.blocks_left} blocks left",
        details={
            "deadline": deadline.kind.value,
            "chain": deadline.chain.value,
            "block": deadline.block,
            "blocks_left": deadline.blocks_left,
        },
        loan_ref=loan.pk,
    )
    return 1
