"""Raise, resolve and acknowledge alerts. Deduplicated by key: one open alert per key (a
partial unique constraint); repeats bump `count`. Notifiers run on the first raise, on a raise
after the key was resolved (a new alert row), and when the severity escalates; never inside
the transaction (on commit)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from btcloan.models import SEVERITY_RANK, Alert, AlertSeverity

logger = logging.getLogger("btcloan.alerts")


def alert_raise(
    *,
    key: str,
    severity: str,
    title: str,
    details: dict[str, Any] | None = None,
    loan_ref: str | int | None = None,
) -> Alert:
    if severity not in AlertSeverity.values:
        raise ValueError(f"severity must be one of {', '.join(AlertSeverity.values)}")
    now = timezone.now()
    ref = "" if loan_ref is None else str(loan_ref)
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(key=key, resolved_at__isnull=True).first()
        event: str | None = None
        if alert is None:
            try:
                with transaction.atomic():
                    alert = Alert.objects.create(
                        key=key,
                        severity=severity,
                        title=title,
                        details=details or {},
                        loan_ref=ref,
                        first_seen_at=now,
                        last_seen_at=now,
                    )
                reopened = Alert.objects.filter(key=key, resolved_at__isnull=False).exists()
                event = "reopened" if reopened else "raised"
            except IntegrityError:  # raised concurrently: count this one on the winner's row
                alert = Alert.objects.select_for_update().get(key=key, resolved_at__isnull=True)
        if event is None:
            escalated = (
                SEVERITY_RANK[AlertSeverity(severity)]
                > SEVERITY_RANK[AlertSeverity(alert.severity)]
            )
            updates: dict[str, Any] = {"count": F("count") + 1, "last_seen_at": now}
            if details is not None:
                updates["details"] = details
            if escalated:
                updates.update(severity=severity, title=title)
            Alert.objects.filter(pk=alert.pk).update(**updates)
            alert.refresh_from_db()
            event = "escalated" if escalated else None
        if event is not None:
            alert_id = alert.pk
            transaction.on_commit(lambda: _notify(alert_id, event), robust=True)
        else:
            logger.debug("alert %s seen again (%d times)", key, alert.count)
    return alert


def alert_resolve(*, key: str) -> bool:
    """Close the open alert of `key`; the next raise opens (and notifies) a new one."""
    resolved = Alert.objects.filter(key=key, resolved_at__isnull=True).update(
        resolved_at=timezone.now()
    )
    if resolved:
        logger.info("alert resolved: %s", key, extra={"alert_key": key})
    return resolved == 1


def alert_acknowledge(*, alert_ids: list[int], user: Any) -> int:
    """An operator has seen these alerts; returns how many were newly acknowledged."""
    count = Alert.objects.filter(pk__in=alert_ids, acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user
    )
    logger.info("%s acknowledged %d alert(s): %s", user, count, alert_ids)
    return count


def _notify(alert_id: int, event: str) -> None:
    """After commit: log now; email and webhook from Celery tasks (they talk to the network)."""
    from btcloan.alerts import tasks

    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return
    level = logging.ERROR if alert.severity == AlertSeverity.CRITICAL else logging.WARNING
    logger.log(
        level,
        "alert %s [%s] %s",
        event,
        alert.severity,
        alert.title,
        extra={"alert_key": alert.key, "alert_id": alert.pk, "loan_id": alert.loan_ref or None},
    )
    if settings.ALERT_EMAILS:
        tasks.alert_email_send.delay(alert_id, event)
    if settings.ALERT_WEBHOOK_URL:
        tasks.alert_webhook_send.delay(alert_id, event)
