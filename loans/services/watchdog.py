"""The timelock watchdog: every open loan's deadlines on both chains, acted on in time.

It reads both heads once, then for each open loan decides what is due: withdraw an expired
offer, mark a default, sweep a matured collateral, (re)try the steps that must happen (build
TX_1, sign and send it, accept a repayment) and alert while a safety margin is being eaten.
Every action it takes is idempotent, so running it often, or twice at once, is harmless.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from btcloan.alerts.services import alert_raise, alert_resolve
from loans.chain import bitcoin_head, evm_head
from loans.deadlines import Deadline, DeadlineKind, loan_deadlines
from loans.models import (
    AuditCause,
    BitcoinStage,
    IntakeStatus,
    Loan,
    LoanRequestIntake,
    LoanStatus,
)
from loans.policy import LenderAction
from loans.selectors import loans_open
from loans.services.lender import lender_action_request
from loans.services.settlement import evm_outcome

logger = logging.getLogger(__name__)


@dataclass
class WatchdogSummary:
    loans: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    alerts: int = 0
    smallest_margin: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "loans": self.loans,
            "actions": dict(self.actions),
            "alerts": self.alerts,
            "smallest_margin": self.smallest_margin,
        }


# Alert when the party that must act is the lender and fewer blocks than this are left.
MARGIN_ALERTS = {
    DeadlineKind.REPAYMENT_ACCEPTANCE: "LOAN_ALERT_REPAYMENT_MARGIN_BLOCKS",
    DeadlineKind.ESCROW_EXIT: "LOAN_ALERT_TX1_MARGIN_BLOCKS",
}


def watchdog_run() -> WatchdogSummary:
    from loans import tasks

    summary = WatchdogSummary()
    evm = evm_head()
    btc = bitcoin_head()
    # A request whose intake task was lost (a worker died) is read again.
    for intake_id in LoanRequestIntake.objects.exclude(status=IntakeStatus.DONE).values_list(
        "pk", flat=True
    ):
        tasks.intake_loan_request.delay(intake_id)
        summary.actions["intake_loan_request"] += 1
    for loan in loans_open():
        summary.loans += 1
        deadlines = {d.kind: d for d in loan_deadlines(loan, evm_head=evm, btc_head=btc)}
        for deadline in deadlines.values():
            previous = summary.smallest_margin.get(deadline.chain)
            if previous is None or deadline.blocks_left < previous:
                summary.smallest_margin[deadline.chain] = deadline.blocks_left
            summary.alerts += _margin_alert(loan, deadline)
        for action in _due_actions(loan, deadlines):
            summary.actions[_take(loan, action)] += 1
    return summary


# What the watchdog may do for a loan: a lender EVM action, or a follow-up task by name.
Action = LenderAction | str


def _due_actions(loan: Loan, deadlines: dict[DeadlineKind, Deadline]) -> list[Action]:
    status, stage = loan.status, loan.bitcoin_stage
    due: list[Action] = []
    if status == LoanStatus.REQUESTED:
        if not loan.preimage_hash_lender:
            due.append("set_up_escrow")  # its task was lost before it fixed H_L
        elif loan.collateral_lock_feerate is None or stage in (
            BitcoinStage.AWAITING_ESCROW,
            BitcoinStage.ESCROW_SEEN,
        ):
            # The deposit's stage from the UTXO set: the scanner only sees new blocks, so a
            # deposit confirmed before the request (or re-derived after a reorg) shows here.
            due.append("prepare_collateral_lock")
        elif stage in (BitcoinStage.ESCROW_CONFIRMED, BitcoinStage.PRESIGNED):
            due.append("evaluate_offer")
    elif status == LoanStatus.OFFERED:
        expiry = deadlines.get(DeadlineKind.OFFER_EXPIRY)
        if expiry is not None and expiry.passed:
            due.append(LenderAction.WITHDRAW_OFFER)
    elif status == LoanStatus.ACTIVE:
        if stage == BitcoinStage.PRESIGNED:
            due.append("lock_collateral")
        repayment = deadlines.get(DeadlineKind.REPAYMENT_DUE)
        if repayment is not None and repayment.passed:
            due.append(LenderAction.MARK_DEFAULT)
    elif status == LoanStatus.REPAYMENT_IN_PROGRESS:
        due.append("accept_repayment")
    sweep = deadlines.get(DeadlineKind.COLLATERAL_SWEEP)
    if sweep is not None and sweep.passed and _lender_may_sweep(loan):
        due.append("sweep_collateral")
    return due


def _take(loan: Loan, action: Action) -> str:
    """Do one due action; returns its name for the summary."""
    if isinstance(action, LenderAction):
        outcome = lender_action_request(loan_id=loan.pk, action=action, cause=AuditCause.WATCHDOG)
        return f"{action.value}:{outcome}"
    from loans import tasks

    getattr(tasks, action).delay(loan.pk)
    return action


def _lender_may_sweep(loan: Loan) -> bool:
    """After a default or a refused repayment the collateral is the lender's. A repaid loan's
    collateral is the borrower's even when they are late to release it: never swept."""
    return evm_outcome(loan) in (LoanStatus.DEFAULTED, LoanStatus.REFUNDED_TO_BORROWER)


def _margin_alert(loan: Loan, deadline: Deadline) -> int:
    setting = MARGIN_ALERTS.get(deadline.kind)
    if setting is None:
        return 0
    key = f"loan:{loan.pk}:{deadline.kind.value}"
    threshold = int(getattr(settings, setting))
    # Before an offer nothing is lent: an escrow nearing its exit is the borrower's business.
    at_risk = not (
        deadline.kind == DeadlineKind.ESCROW_EXIT and loan.status == LoanStatus.REQUESTED
    )
    if deadline.blocks_left >= threshold or not at_risk:
        alert_resolve(key=key)
        return 0
    severity = "critical" if deadline.blocks_left < threshold // 2 else "warning"
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
