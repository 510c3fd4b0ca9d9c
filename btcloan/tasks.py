"""Service-level tasks that belong to no app."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="btcloan.ping")
def ping(token: str) -> dict[str, str]:
    """Echo a token: proves the broker, a worker and the result backend all answer."""
    return {"pong": token}
