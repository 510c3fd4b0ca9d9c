"""Operators' view of loans: their workflows and audit trail inline, read-only.

Loans change through the lifecycle services only, so nothing here edits a loan's state.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from loans.models import AuditEntry, BorrowerSignature, Loan, LoanWorkflow


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


class AuditInline(ReadOnlyInline):
    model = AuditEntry
    fields = ("at", "cause", "cause_ref", "action", "field", "from_value", "to_value", "applied")
    readonly_fields = fields


@admin.register(Loan)
class LoanAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "onchain_id",
        "status",
        "bitcoin_stage",
        "borrower_address",
        "amount_wei",
        "loan_sats",
        "updated_at",
    )
    list_filter = ("status", "bitcoin_stage", "chain_id")
    search_fields = ("borrower_address", "escrow_address", "escrow_txid", "collateral_txid")
    # Secrets (P_L, even encrypted) are not shown: the field is excluded, not just read-only.
    exclude = ("preimage_lender_encrypted",)
    inlines = (WorkflowInline, AuditInline)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Loan._meta.fields if f.name != "preimage_lender_encrypted"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "loan", "cause", "action", "field", "from_value", "to_value", "applied")
    list_filter = ("cause", "action", "applied")
    readonly_fields = tuple(f.name for f in AuditEntry._meta.fields)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BorrowerSignature)
class BorrowerSignatureAdmin(admin.ModelAdmin):
    list_display = ("loan", "txid", "verified_at")
    readonly_fields = ("loan", "txid", "sighash", "signature", "verified_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
