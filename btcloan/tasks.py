"""Service-level tasks that belong to no app."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="btcloan.ping")
def ping(token: str) -> dict[str, str]:
    """Echo a token: proves the broker, a worker and the result backend all answer."""
    return {"pong": token}


# Tasks that live in subpackages; imported here so workers register them.
from btcloan.alerts.tasks import alert_email_send, alert_webhook_send  # noqa: E402
from btcloan.api.tasks import auth_records_purge_task  # noqa: E402

__all__ = ["alert_email_send", "alert_webhook_send", "auth_records_purge_task", "ping"]
