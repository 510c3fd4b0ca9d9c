"""The one transition service: compare-and-set on the loan row, its audit row in the same
transaction. An illegal transition is refused and recorded, never applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from loans.models import AuditAction, AuditCause, AuditEntry, Loan
from loans.transitions import LoanField, allowed_sources


@dataclass(frozen=True)
class TransitionResult:
    applied: bool
    field: LoanField
    from_value: str
    to_value: str
    # True when the loan already was in the target state: a replayed fact, nothing to do.
    unchanged: bool = False

    @property
    def refused(self) -> bool:
        return not self.applied and not self.unchanged


def loan_transition(
    *,
    loan_id: int,
    field: LoanField,
    to: str,
    cause: AuditCause,
    cause_ref: str = "",
    details: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
) -> TransitionResult:
    """Move `field` of the loan to `to` if the table allows it from the current value.

    `updates` are other columns written in the same UPDATE (the block of the event, say), so a
    status and the facts that justify it never part. Safe to call twice with the same fact.
    """
    sources = allowed_sources(field, to)
    with transaction.atomic():
        current = Loan.objects.select_for_update().values_list(field, flat=True).get(pk=loan_id)
        if current == to:
            return TransitionResult(False, field, current, to, unchanged=True)
        changed = Loan.objects.filter(pk=loan_id, **{f"{field}__in": sources}).update(
            **{field: to, "updated_at": timezone.now()}, **(updates or {})
        )
        AuditEntry.objects.create(
            loan_id=loan_id,
            cause=cause,
            cause_ref=cause_ref,
            action=AuditAction.TRANSITION if changed else "transition_refused",
            field=field,
            from_value=current,
            to_value=to,
            applied=bool(changed),
            details=details or {},
        )
    return TransitionResult(bool(changed), field, current, to)


def loan_record(
    *,
    loan_id: int,
    action: AuditAction,
    cause: AuditCause,
    cause_ref: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record an action or observation that changes no state (an alert, an operator's retry)."""
    return AuditEntry.objects.create(
        loan_id=loan_id,
        cause=cause,
        cause_ref=cause_ref,
        action=action,
        details=details or {},
    )
