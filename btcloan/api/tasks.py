from __future__ import annotations

from celery import shared_task

from btcloan.api.services import auth_records_purge


@shared_task(name="btcloan.auth_records_purge")
def auth_records_purge_task() -> dict[str, int]:
    """Hourly from beat: drop expired sign-in nonces and old tokens."""
    return auth_records_purge()
