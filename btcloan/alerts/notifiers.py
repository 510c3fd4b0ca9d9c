"""Delivery of one alert notification by email or webhook (called from the Celery tasks)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from django.conf import settings
from django.core.mail import send_mail

from btcloan.models import Alert


class WebhookError(RuntimeError):
    """The webhook answered with a non-2xx status (worth retrying)."""


def alert_payload(alert: Alert, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "key": alert.key,
        "severity": alert.severity,
        "title": alert.title,
        "details": alert.details,
        "loan_ref": alert.loan_ref or None,
        "count": alert.count,
        "first_seen_at": alert.first_seen_at.isoformat(),
        "last_seen_at": alert.last_seen_at.isoformat(),
    }


def alert_webhook_deliver(*, alert_id: int, event: str) -> int | None:
    """POST the alert as JSON to settings.ALERT_WEBHOOK_URL; returns the HTTP status."""
    alert = Alert.objects.filter(pk=alert_id).first()
    url = settings.ALERT_WEBHOOK_URL
    if alert is None or not url:
        return None
    body = json.dumps(alert_payload(alert, event)).encode()
    request = urllib.request.Request(  # noqa: S310 - an operator-configured http(s) URL
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=settings.ALERT_WEBHOOK_TIMEOUT
        ) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook answered HTTP {exc.code}") from None


def alert_email_deliver(*, alert_id: int, event: str) -> int:
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None or not settings.ALERT_EMAILS:
        return 0
    subject = f"[btcloan {alert.severity}] {alert.title}"
    body = json.dumps(alert_payload(alert, event), indent=2)
    return send_mail(subject, body, None, list(settings.ALERT_EMAILS), fail_silently=False)
