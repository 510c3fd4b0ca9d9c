"""Service-wide records: wallet sign-in (nonces, tokens, API keys) and operator alerts."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class BorrowerWallet(models.Model):
    """The wallet a borrower user signed in with: the user *is* this address to the API."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="borrower_wallet"
    )
    address = models.CharField(max_length=42, unique=True)  # EIP-55 checksummed
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.address


class SignInNonce(models.Model):
    """A single-use EIP-4361 nonce issued to one address; `used_at` is set by compare-and-set."""

    nonce = models.CharField(max_length=64, unique=True)
    address = models.CharField(max_length=42)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="btcloan_nonce_expires_idx")]

    def __str__(self) -> str:
        return f"{self.address} {self.nonce[:6]}…"


class AccessToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    token_hash = models.CharField(max_length=64, unique=True)
    # The user's session hash (an HMAC of the password hash) when the token was issued: a
    # password change makes it differ, and the token stops working (as Django's sessions do).
    password_marker = models.CharField(max_length=128, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token of {self.user} until {self.expires_at:%Y-%m-%d %H:%M}"


class OperatorPermission(models.Model):
    """No table: it carries the operators' action permissions, which the roles (Django groups,
    btcloan.roles) grant and the admin's actions and the API check."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("approve_lender_action", "Approve lender actions held for an operator"),
            ("retry_work", "Retry failed workflows, events, notices and lender calls"),
            ("rescan_chain", "Rescan the chains, run the watchdog and the reconciler"),
            ("rebroadcast_transaction", "Rebroadcast or CPFP-bump Bitcoin transactions"),
        ]

    def __str__(self) -> str:
        return "operator permissions"


class ApiKeyRole(models.TextChoices):
    OPERATOR = "operator", "operator (full operator API and metrics)"
    METRICS = "metrics", "metrics (scrape /metrics only)"


class ApiKey(models.Model):
    """A service client's key. Only its SHA-256 and a short prefix (to recognise it) are stored."""

    name = models.CharField(max_length=100, unique=True)
    role = models.CharField(max_length=16, choices=ApiKeyRole.choices)
    # The identity requests made with this key act as (a user with no usable password).
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_key"
    )
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AlertSeverity(models.TextChoices):
    INFO = "info", "info"
    WARNING = "warning", "warning"
    CRITICAL = "critical", "critical"


SEVERITY_RANK = {AlertSeverity.INFO: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}


class Alert(models.Model):
    """Something an operator must look at. One open alert per key; repeats bump `count`."""

    key = models.CharField(max_length=200)
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices)
    title = models.CharField(max_length=300)
    details = models.JSONField(default=dict, blank=True)
    # The loan this is about, as a plain reference (alerts outlive and predate loan rows).
    loan_ref = models.CharField(max_length=64, blank=True, default="")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    count = models.PositiveIntegerField(default=1)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["key"], condition=Q(resolved_at__isnull=True), name="btcloan_alert_open_key"
            )
        ]
        indexes = [models.Index(fields=["loan_ref"], name="btcloan_alert_loan_idx")]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None
