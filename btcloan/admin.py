"""Operator admin for alerts and API access. Secrets (token and key hashes) are not shown."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from btcloan.alerts.services import alert_acknowledge, alert_resolve
from btcloan.models import AccessToken, Alert, ApiKey, BorrowerWallet

# The list pages need the window's width for their columns (loans, the audit trail, both chains'
# records): the app list is on the admin's index and in the breadcrumbs, not beside every page.
admin.site.enable_nav_sidebar = False


class OperatorActions:
    """`@admin.action(permissions=["retry"])` asks `has_retry_permission`: the operator's role
    (btcloan.roles), never `is_staff` alone."""

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("btcloan.approve_lender_action")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("btcloan.retry_work")

    def has_rescan_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("btcloan.rescan_chain")

    def has_rebroadcast_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("btcloan.rebroadcast_transaction")


class ReadOnlyAdmin(OperatorActions, admin.ModelAdmin):
    """Rows only the services write (watchers' records, audit): operators look, never edit."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(_ReadOnly):
    list_display = (
        "title",
        "severity",
        "loan_ref",
        "count",
        "first_seen_at",
        "last_seen_at",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
    )
    list_filter = ("severity", ("resolved_at", admin.EmptyFieldListFilter), "acknowledged_at")
    search_fields = ("key", "title", "loan_ref")
    date_hierarchy = "last_seen_at"
    actions = ("acknowledge", "resolve")

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Detail pages stay read-only; the actions need the role's "change alert".
        return request.user.has_perm("btcloan.change_alert") if obj is None else False

    @admin.action(description="Acknowledge the selected alerts", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        count = alert_acknowledge(
            alert_ids=list(queryset.values_list("pk", flat=True)), user=request.user
        )
        self.message_user(request, f"{count} alert(s) acknowledged.", messages.SUCCESS)

    @admin.action(description="Resolve the selected alerts", permissions=["change"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        keys = list(queryset.filter(resolved_at__isnull=True).values_list("key", flat=True))
        count = sum(alert_resolve(key=key) for key in keys)
        self.message_user(request, f"{count} alert(s) resolved.", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(_ReadOnly):
    list_display = ("name", "role", "prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("name", "role", "prefix", "user", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke",)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("btcloan.change_apikey") if obj is None else False

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)


@admin.register(AccessToken)
class AccessTokenAdmin(_ReadOnly):
    list_display = ("user", "created_at", "expires_at", "revoked_at")
    fields = ("user", "created_at", "expires_at", "revoked_at")
    readonly_fields = fields
    list_select_related = ("user",)
    actions = ("revoke",)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("btcloan.change_accesstoken") if obj is None else False

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(BorrowerWallet)
class BorrowerWalletAdmin(_ReadOnly):
    list_display = ("address", "user", "created_at")
    search_fields = ("address",)
