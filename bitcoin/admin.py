"""bitcoin: admin. Read-only views of facts and transactions; the actions are an operator's:
rebroadcast, bump by CPFP, rescan from a block. Nothing here holds or shows a key."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from bitcoin import tasks
from bitcoin.models import (
    BitcoinFact,
    BitcoinTransaction,
    LenderUtxo,
    ObservedPayment,
    ObservedSpend,
    RegisteredSpend,
    ScanCursor,
    ScannedBlock,
    TransactionMonitoring,
    TransactionTransition,
    TxPurpose,
    WatchedOutpoint,
    WatchedScript,
)
from bitcoin.rpc import BitcoinRPCError
from bitcoin.services import chain_rescan_from, transaction_rebroadcast
from btcloan.admin import ReadOnlyAdmin


class TransitionInline(admin.TabularInline):
    model = TransactionTransition
    extra = 0
    can_delete = False
    readonly_fields = ("from_status", "to_status", "cause", "created_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MonitoringInline(admin.StackedInline):
    model = TransactionMonitoring
    extra = 0
    can_delete = False
    readonly_fields = ("status", "target_confirmations", "last_checked_at", "checks")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BitcoinTransaction)
class BitcoinTransactionAdmin(ReadOnlyAdmin):
    list_display = (
        "txid",
        "purpose",
        "loan_ref",
        "status",
        "confirmations",
        "block_height",
        "fee_sats",
        "vsize",
        "attempts",
        "updated_at",
    )
    list_filter = ("status", "purpose")
    search_fields = ("txid", "loan_ref")
    inlines = (MonitoringInline, TransitionInline)
    actions = ("rebroadcast", "bump_cpfp")

    @admin.action(description="Rebroadcast the selected transactions", permissions=["rebroadcast"])
    def rebroadcast(self, request: HttpRequest, queryset: QuerySet[BitcoinTransaction]) -> None:
        queued = 0
        with transaction.atomic():
            for tx in queryset:
                if transaction_rebroadcast(tx_id=tx.pk):
                    tasks.broadcast.delay_on_commit(tx.pk)
                    self.log_change(request, tx, "operator: rebroadcast queued")
                    queued += 1
        self.message_user(request, f"{queued} transaction(s) queued for broadcast")

    @admin.action(
        description="Bump the selected TX_1s (CPFP package) and sweeps (RBF)",
        permissions=["rebroadcast"],
    )
    def bump_cpfp(self, request: HttpRequest, queryset: QuerySet[BitcoinTransaction]) -> None:
        rows = list(
            queryset.filter(purpose__in=(TxPurpose.COLLATERAL_LOCK, TxPurpose.LENDER_SWEEP))
        )
        for row in rows:
            tasks.bump.delay(row.pk)
            self.log_change(request, row, "operator: fee bump queued")
        self.message_user(request, f"{len(rows)} fee bump(s) queued")


@admin.register(ScanCursor)
class ScanCursorAdmin(ReadOnlyAdmin):
    list_display = ("network", "height", "block_hash", "updated_at")
    actions = ("rescan_last_ten",)

    @admin.action(description="Rescan the last 10 blocks", permissions=["rescan"])
    def rescan_last_ten(self, request: HttpRequest, queryset: QuerySet[ScanCursor]) -> None:
        for cursor in queryset:
            try:
                facts = chain_rescan_from(height=cursor.height - 9)
            except BitcoinRPCError as exc:
                self.message_user(request, f"rescan failed: {exc}", messages.ERROR)
                return
            self.log_change(
                request, cursor, f"operator: rescan from height {cursor.height - 9}, {facts} facts"
            )
            self.message_user(request, f"{cursor.network}: rewound, {facts} fact(s) recorded")


@admin.register(ScannedBlock)
class ScannedBlockAdmin(ReadOnlyAdmin):
    list_display = ("network", "height", "block_hash", "scanned_at")
    list_filter = ("network",)
    ordering = ("-height",)


@admin.register(WatchedScript)
class WatchedScriptAdmin(ReadOnlyAdmin):
    list_display = ("address", "purpose", "loan_ref", "target_confirmations", "active")
    list_filter = ("purpose", "active")
    search_fields = ("address", "script_pubkey", "loan_ref")


@admin.register(WatchedOutpoint)
class WatchedOutpointAdmin(ReadOnlyAdmin):
    list_display = ("txid", "vout", "purpose", "loan_ref", "target_confirmations", "active")
    list_filter = ("purpose", "active")
    search_fields = ("txid", "loan_ref")


@admin.register(ObservedPayment)
class ObservedPaymentAdmin(ReadOnlyAdmin):
    list_display = ("txid", "vout", "value_sats", "status", "confirmations", "block_height")
    list_filter = ("status",)
    search_fields = ("txid", "watched__loan_ref")


@admin.register(ObservedSpend)
class ObservedSpendAdmin(ReadOnlyAdmin):
    list_display = ("txid", "watched", "leaf_index", "preimage", "status", "confirmations")
    list_filter = ("status", "leaf_index")
    search_fields = ("txid", "watched__loan_ref")


@admin.register(RegisteredSpend)
class RegisteredSpendAdmin(ReadOnlyAdmin):
    list_display = ("txid", "purpose", "loan_ref", "prevout_txid", "prevout_vout", "created_at")
    list_filter = ("purpose",)
    search_fields = ("txid", "loan_ref")


@admin.register(LenderUtxo)
class LenderUtxoAdmin(ReadOnlyAdmin):
    """The lender's Bitcoin wallet: what funds CPFP children the fee outputs cannot pay."""

    list_display = ("txid", "vout", "value_sats", "status", "source", "loan_ref", "reserved_by")
    list_filter = ("status", "source")
    search_fields = ("txid", "loan_ref", "reserved_by")


@admin.register(BitcoinFact)
class BitcoinFactAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "loan_ref", "created_at", "delivered_at", "attempts")
    list_filter = ("kind",)
    search_fields = ("loan_ref", "dedupe_key")
