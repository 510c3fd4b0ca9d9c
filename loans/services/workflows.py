"""Workflows: the multi-step jobs of a loan (escrow setup, collateral setup, repayment,
default, settlement), each a row that says where it is, what it finished and what failed."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from loans.models import AuditAction, AuditCause, LoanWorkflow, WorkflowStatus, WorkflowType
from loans.services.lifecycle import loan_record

_OPEN = (WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.WAITING)


class WorkflowStateError(Exception):
    """The workflow is not in a state that allows this step."""


def workflow_start(
    *, loan_id: int, type: WorkflowType, step: str, completed: tuple[str, ...] = ()
) -> LoanWorkflow:
    """The loan's workflow of this type, created at `step` if it does not exist yet (with
    `completed` already done: one write where a start and its advances would take several).
    An existing workflow is returned as it is: advance it for each of `completed` it lacks."""
    # Inserted unless there (ON CONFLICT DO NOTHING on the unique loan and type), then read:
    # no savepoint inside the caller's transaction, where `get_or_create` takes one.
    LoanWorkflow.objects.bulk_create(
        [
            LoanWorkflow(
                loan_id=loan_id,
                type=type,
                status=WorkflowStatus.RUNNING,
                current_step=step,
                steps_completed=list(completed),
            )
        ],
        ignore_conflicts=True,
    )
    return LoanWorkflow.objects.get(loan_id=loan_id, type=type)


def workflow_advance(
    *, workflow_id: int, completed_step: str, next_step: str = "", waiting: bool = False
) -> bool:
    """Mark `completed_step` done and move to `next_step`. Replaying a done step is a no-op."""
    with transaction.atomic():
        workflow = LoanWorkflow.objects.select_for_update().get(pk=workflow_id)
        if completed_step in workflow.steps_completed:
            return False
        if workflow.status not in _OPEN:
            raise WorkflowStateError(f"workflow {workflow_id} is {workflow.status}")
        workflow.steps_completed = [*workflow.steps_completed, completed_step]
        workflow.current_step = next_step
        workflow.status = WorkflowStatus.WAITING if waiting else WorkflowStatus.RUNNING
        workflow.save(update_fields=["steps_completed", "current_step", "status", "updated_at"])
    return True


def workflow_complete(*, workflow_id: int, completed_step: str = "") -> bool:
    with transaction.atomic():
        workflow = LoanWorkflow.objects.select_for_update().get(pk=workflow_id)
        if workflow.status == WorkflowStatus.COMPLETED:
            return False
        if completed_step and completed_step not in workflow.steps_completed:
            workflow.steps_completed = [*workflow.steps_completed, completed_step]
        workflow.status = WorkflowStatus.COMPLETED
        workflow.current_step = ""
        workflow.error_details = {}
        workflow.save(
            update_fields=[
                "steps_completed",
                "status",
                "current_step",
                "error_details",
                "updated_at",
            ]
        )
    return True


def workflow_fail(
    *, workflow_id: int, step: str, error: str, details: dict[str, Any] | None = None
) -> bool:
    """Park the workflow as failed at `step` with its error, for an operator or a retry."""
    with transaction.atomic():
        changed = LoanWorkflow.objects.filter(pk=workflow_id, status__in=_OPEN).update(
            status=WorkflowStatus.FAILED,
            current_step=step,
            error_details={"error": error, "at": timezone.now().isoformat(), **(details or {})},
            updated_at=timezone.now(),
        )
        if changed:
            workflow = LoanWorkflow.objects.get(pk=workflow_id)
            loan_record(
                loan_id=workflow.loan_id,
                action=AuditAction.WORKFLOW_FAILED,
                cause=AuditCause.BACKEND,
                details={"workflow": workflow.type, "step": step, "error": error},
            )
    return bool(changed)


def workflow_retry(*, workflow_id: int, operator: str) -> bool:
    """An operator sends a failed workflow back to work; the retry is counted and audited."""
    with transaction.atomic():
        changed = LoanWorkflow.objects.filter(pk=workflow_id, status=WorkflowStatus.FAILED).update(
            status=WorkflowStatus.PENDING,
            retry_count=F("retry_count") + 1,
            updated_at=timezone.now(),
        )
        if changed:
            workflow = LoanWorkflow.objects.get(pk=workflow_id)
            loan_record(
                loan_id=workflow.loan_id,
                action=AuditAction.WORKFLOW_RETRIED,
                cause=AuditCause.OPERATOR,
                cause_ref=operator,
                details={"workflow": workflow.type, "step": workflow.current_step},
            )
    return bool(changed)


def workflows_complete(
    *, loan_id: int, types: tuple[WorkflowType, ...] | None = None, failed_too: bool = False
) -> int:
    """The loan's open workflows (of `types`, else all) end `completed`: the chain shows their
    work done (an offer confirmed, the loan closed). `failed_too`: also one that had failed
    (the chain proved the failure moot)."""
    statuses = (*_OPEN, WorkflowStatus.FAILED) if failed_too else _OPEN
    workflows = LoanWorkflow.objects.filter(loan_id=loan_id, status__in=statuses)
    if types is not None:
        workflows = workflows.filter(type__in=types)
    return workflows.update(
        status=WorkflowStatus.COMPLETED, current_step="", updated_at=timezone.now()
    )


def workflows_fail(*, loan_id: int, error: str) -> int:
    """The loan's open workflows end `failed` (the request became invalid)."""
    return sum(
        workflow_fail(workflow_id=pk, step=step, error=error)
        for pk, step in LoanWorkflow.objects.filter(loan_id=loan_id, status__in=_OPEN).values_list(
            "pk", "current_step"
        )
    )
