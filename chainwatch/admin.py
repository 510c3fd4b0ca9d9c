"""chainwatch: admin. Read-only views of the facts; retries are the only actions."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from btcloan.admin import ReadOnlyAdmin
from chainwatch.indexer.delivery import event_retry, reorg_notice_retry
from chainwatch.models import (
    ChainCursor,
    EvmEvent,
    EvmTransaction,
    EvmTransactionAttempt,
    IndexedBlock,
    ReorgNotice,
)
from chainwatch.outbox.services import evm_transaction_retry


@admin.register(ChainCursor)
class ChainCursorAdmin(ReadOnlyAdmin):
    list_display = ("chain_id", "block_number", "block_hash", "window_size", "updated_at")


@admin.register(IndexedBlock)
class IndexedBlockAdmin(ReadOnlyAdmin):
    list_display = ("chain_id", "number", "hash")
    list_filter = ("chain_id",)


@admin.register(EvmEvent)
class EvmEventAdmin(ReadOnlyAdmin):
    list_display = (
        "event_name",
        "loan_id",
        "block_number",
        "log_index",
        "status",
        "attempts",
        "transaction_hash",
    )
    list_filter = ("status", "event_name", "contract_name", "chain_id")
    search_fields = ("transaction_hash", "delivery_key", "=loan_id")
    ordering = ("-block_number", "-log_index")
    actions = ("retry",)

    @admin.action(description="Retry the selected failed events", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[EvmEvent]) -> None:
        done = 0
        for event in queryset:
            if event_retry(event_id=event.pk):
                self.log_change(request, event, "operator: retried")
                done += 1
        self.message_user(request, f"{done} event(s) pending again", messages.SUCCESS)


@admin.register(ReorgNotice)
class ReorgNoticeAdmin(ReadOnlyAdmin):
    list_display = ("delivery_key", "fork_block_number", "orphaned_events", "status", "created_at")
    list_filter = ("status", "chain_id")
    actions = ("retry",)

    @admin.action(description="Retry the selected failed notices", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[ReorgNotice]) -> None:
        done = 0
        for notice in queryset:
            if reorg_notice_retry(notice_id=notice.pk):
                self.log_change(request, notice, "operator: retried")
                done += 1
        self.message_user(request, f"{done} notice(s) pending again", messages.SUCCESS)


class EvmTransactionAttemptInline(admin.TabularInline):
    """Every transaction signed for the row: first signature, fee bumps, a cancellation."""

    model = EvmTransactionAttempt
    fields = ("kind", "nonce", "gas_price_wei", "tx_hash", "reason", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(EvmTransaction)
class EvmTransactionAdmin(ReadOnlyAdmin):
    list_display = (
        "loan_ref",
        "action",
        "function",
        "status",
        "nonce",
        "gas_price_wei",
        "retries",
        "tx_hash",
        "block_number",
        "revert_reason",
    )
    list_filter = ("status", "function", "chain_id")
    search_fields = ("loan_ref", "tx_hash")
    actions = ("retry",)
    inlines = (EvmTransactionAttemptInline,)

    @admin.action(description="Retry calls that reverted in gas estimation", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[EvmTransaction]) -> None:
        done = 0
        for call in queryset:
            if evm_transaction_retry(tx_id=call.pk):
                self.log_change(request, call, "operator: retried")
                done += 1
        self.message_user(request, f"{done} call(s) queued again", messages.SUCCESS)
