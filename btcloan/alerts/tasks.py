"""Alert notifications that touch the network, retried on network errors."""

from __future__ import annotations

import smtplib
import urllib.error

from celery import shared_task

from btcloan.alerts.notifiers import WebhookError, alert_email_deliver, alert_webhook_deliver


@shared_task(
    name="btcloan.alert_webhook_send",
    autoretry_for=(WebhookError, urllib.error.URLError, TimeoutError, ConnectionError),
    retry_backoff=5,
    retry_backoff_max=600,
    max_retries=8,
)
def alert_webhook_send(alert_id: int, event: str) -> dict[str, int | None]:
    return {"alert_id": alert_id, "status": alert_webhook_deliver(alert_id=alert_id, event=event)}


@shared_task(
    name="btcloan.alert_email_send",
    autoretry_for=(smtplib.SMTPException, ConnectionError, TimeoutError),
    retry_backoff=30,
    max_retries=5,
)
def alert_email_send(alert_id: int, event: str) -> dict[str, int]:
    return {"alert_id": alert_id, "sent": alert_email_deliver(alert_id=alert_id, event=event)}
