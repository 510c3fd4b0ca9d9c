"""Operators' view of loans: workflows, approvals and the audit trail inline, the timeline
across both chains, and actions that go through the services (each one audited).

Loans change through the lifecycle services only, so nothing here edits a loan's fields.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from btcloan.admin import OperatorActions, ReadOnlyAdmin
from loans.charts import timeline_chart
from loans.dashboard import loan_lanes
from loans.models import (
    ApprovalStatus,
    AuditAction,
    AuditCause,
    AuditEntry,
    BorrowerSignature,
    LenderApproval,
    Loan,
    LoanRequestIntake,
    LoanWorkflow,
    WorkflowStatus,
)
from loans.next_steps import DeskPass, desk_pass_enqueue
from loans.policy import LenderAction
from loans.selectors import loan_next_action, loan_timeline
from loans.services.accounting import loan_accounting
from loans.services.lender import lender_action_approve
from loans.services.lifecycle import loan_record
from loans.services.watchdog import loan_watch_reset
from loans.services.workflows import workflow_retry


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class WorkflowInline(ReadOnlyInline):
    model = LoanWorkflow
    fields = ("type", "status", "current_step", "steps_completed", "retry_count", "error_details")
    readonly_fields = fields


class ApprovalInline(ReadOnlyInline):
    model = LenderApproval
    fields = ("action", "status", "requested_at", "decided_by", "decided_at")
    readonly_fields = fields


class AuditInline(ReadOnlyInline):
    model = AuditEntry
    fields = ("at", "cause", "cause_ref", "action", "field", "from_value", "to_value", "applied")
    readonly_fields = fields


def _operator(request: HttpRequest) -> str:
    return str(getattr(request.user, "username", "") or "operator")


@admin.register(Loan)
class LoanAdmin(OperatorActions, admin.ModelAdmin):
    list_display = (
        "id",
        "onchain_id",
        "status",
        "bitcoin_stage",
        "borrower_address",
        "loan_sats",
        "offer_block",
        "activation_block",
        "updated_at",
    )
    list_filter = ("status", "bitcoin_stage", "contract_flavour", "chain_id")
    search_fields = ("borrower_address", "escrow_address", "escrow_txid", "collateral_txid")
    # P_L, even encrypted, is not shown: the field is excluded, not merely read-only.
    exclude = ("preimage_lender_encrypted",)
    inlines = (WorkflowInline, ApprovalInline, AuditInline)
    actions = ("approve_held_actions", "retry_failed_workflows", "run_watchdog", "reconcile_now")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        own = [f.name for f in Loan._meta.fields if f.name != "preimage_lender_encrypted"]
        return ["next_action", "accounting", "timeline_picture", "timeline", *own]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="next action")
    def next_action(self, loan: Loan) -> str:
        action = loan_next_action(loan=loan)
        return f"{action.party}: {action.action}"

    @admin.display(description="on both chains")
    def timeline_picture(self, loan: Loan) -> str:
        return timeline_chart(loan_lanes(loan=loan))

    @admin.display(description="accounting (EVM side: owed, paid by the contract, stranded)")
    def accounting(self, loan: Loan) -> str:
        accounting = loan_accounting(loan)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((f.party, f.item, f.owed_wei, f.paid_wei, f.stranded_wei) for f in accounting.flows),
        )
        return format_html(
            "<p>outcome on the contract: {} ({}); stranded in the contract: {} wei</p>"
            "<table><thead><tr><th>party</th><th>item</th><th>owed (wei)</th>"
            "<th>paid (wei)</th><th>stranded (wei)</th></tr></thead><tbody>{}</tbody></table>",
            accounting.outcome,
            loan.contract_flavour,
            accounting.stranded_wei,
            rows,
        )

    @admin.display(description="timeline (both chains and the backend)")
    def timeline(self, loan: Loan) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (f"{e.at:%Y-%m-%d %H:%M:%S}", e.source, e.what, e.block or "", e.ref)
                for e in loan_timeline(loan=loan)
            ),
        )
        return format_html(
            '<table class="btcloan-timeline"><thead><tr><th>when</th><th>chain</th>'
            "<th>what</th><th>block</th><th>ref</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.action(
        description="Approve the lender actions held for these loans", permissions=["approve"]
    )
    def approve_held_actions(self, request: HttpRequest, queryset: QuerySet[Loan]) -> None:
        held = LenderApproval.objects.filter(
            loan__in=queryset, status=ApprovalStatus.PENDING
        ).select_related("loan")
        done = []
        for approval in held:
            done.append(
                lender_action_approve(
                    loan_id=approval.loan_id,
                    action=LenderAction(approval.action),
                    operator=_operator(request),
                )
            )
            self._history(request, approval.loan, f"approved held action {approval.action}")
        self.message_user(
            request,
            f"{len(done)} held action(s) approved; each is sent only if its guard still holds "
            "when it is signed (a refusal is in the loan's audit trail).",
        )

    @admin.action(description="Retry the failed workflows of these loans", permissions=["retry"])
    def retry_failed_workflows(self, request: HttpRequest, queryset: QuerySet[Loan]) -> None:
        failed = LoanWorkflow.objects.filter(
            loan__in=queryset, status=WorkflowStatus.FAILED
        ).select_related("loan")
        retried = 0
        for workflow in failed:
            retried += workflow_retry(workflow_id=workflow.pk, operator=_operator(request))
            self._history(request, workflow.loan, f"retried workflow {workflow.type}")
        self.message_user(request, f"{retried} workflow(s) sent back to work.")

    @admin.action(description="Run the timelock watchdog now", permissions=["rescan"])
    def run_watchdog(self, request: HttpRequest, queryset: QuerySet[Loan]) -> None:
        self._audit(request, queryset, AuditAction.OPERATOR_RAN_WATCHDOG)
        # The watchdog looks only at what changed: make it look at these again.
        loan_watch_reset(loan_ids=list(queryset.values_list("pk", flat=True)))
        desk_pass_enqueue(which=DeskPass.WATCHDOG)
        self.message_user(request, "The watchdog runs now; its actions appear in the audit.")

    @admin.action(description="Reconcile with the chains now", permissions=["rescan"])
    def reconcile_now(self, request: HttpRequest, queryset: QuerySet[Loan]) -> None:
        self._audit(request, queryset, AuditAction.OPERATOR_RECONCILED)
        desk_pass_enqueue(
            which=DeskPass.RECONCILE, loan_ids=list(queryset.values_list("pk", flat=True))
        )
        self.message_user(request, "Reconciliation runs now; disagreements raise alerts.")

    def _audit(self, request: HttpRequest, queryset: QuerySet[Loan], action: AuditAction) -> None:
        for loan in queryset:
            loan_record(
                loan_id=loan.pk,
                action=action,
                cause=AuditCause.OPERATOR,
                cause_ref=_operator(request),
            )
            self._history(request, loan, action.replace("_", " "))

    def _history(self, request: HttpRequest, loan: Loan, message: str) -> None:
        """The loan's admin history ("History" on its page) shows what operators did."""
        self.log_change(request, loan, f"Operator action: {message}")


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "at",
        "loan",
        "cause",
        "action_name",
        "field",
        "from_value",
        "to_value",
        "applied",
    )
    ordering = ("-at", "-id")  # newest first
    list_filter = ("cause", "action", "applied")
    readonly_fields = tuple(f.name for f in AuditEntry._meta.fields)

    @admin.display(description="action", ordering="action")
    def action_name(self, entry: AuditEntry) -> str:
        """The recorded name itself (what the runbook and the logs say), also for a row written
        before its name was an AuditAction member."""
        return entry.action


@admin.register(BorrowerSignature)
class BorrowerSignatureAdmin(admin.ModelAdmin):
    list_display = ("loan", "txid", "verified_at")
    readonly_fields = ("loan", "txid", "sighash", "signature", "verified_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LoanRequestIntake)
class LoanRequestIntakeAdmin(admin.ModelAdmin):
    list_display = ("onchain_id", "status", "attempts", "request_block", "loan", "updated_at")
    list_filter = ("status",)
    readonly_fields = tuple(f.name for f in LoanRequestIntake._meta.fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
