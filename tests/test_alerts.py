"""Alerts: deduplicated by key, notified on first raise / re-open / escalation, resolved;
the webhook is really POSTed by a real Celery worker, after commit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from btcloan.alerts.notifiers import WebhookError, alert_email_deliver, alert_webhook_deliver
from btcloan.alerts.services import alert_raise, alert_resolve
from btcloan.models import Alert


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 204
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.received.append(
                    {
                        "content_type": self.headers["Content-Type"],
                        **json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(receiver.status)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    """A local HTTP server; this process and any worker started after it post to it."""
    receiver = WebhookReceiver()
    settings.ALERT_WEBHOOK_URL = receiver.url
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    yield receiver
    receiver.close()


def _raise(**overrides: Any) -> Alert:
    fields = {"key": "margin:loan-7", "severity": "warning", "title": "margin below 20 blocks"}
    return alert_raise(**{**fields, **overrides})


@pytest.mark.django_db
def test_dedup_escalation_resolve_and_reopen(
    django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="btcloan.alerts")
    with django_capture_on_commit_callbacks(execute=True) as first:
        alert = _raise(details={"margin": 19}, loan_ref=7)
    assert len(first) == 1
    assert (alert.count, alert.loan_ref, alert.details) == (1, "7", {"margin": 19})

    with django_capture_on_commit_callbacks(execute=True) as repeats:
        _raise(details={"margin": 18})
        again = _raise(severity="info")  # a lower severity never downgrades
    assert repeats == []  # no notification for repeats
    assert Alert.objects.count() == 1
    assert (again.count, again.severity, again.details) == (3, "warning", {"margin": 18})

    with django_capture_on_commit_callbacks(execute=True) as escalation:
        escalated = _raise(severity="critical", title="margin below 5 blocks")
    assert len(escalation) == 1
    assert (escalated.severity, escalated.title, escalated.count) == (
        "critical",
        "margin below 5 blocks",
        4,
    )

    assert alert_resolve(key="margin:loan-7") is True
    assert alert_resolve(key="margin:loan-7") is False
    with django_capture_on_commit_callbacks(execute=True) as reopened:
        fresh = _raise()
    assert len(reopened) == 1
    assert fresh.pk != alert.pk
    assert fresh.count == 1
    assert Alert.objects.filter(key="margin:loan-7").count() == 2

    logged = [r.getMessage() for r in caplog.records if r.name == "btcloan.alerts"]
    assert logged == [
        "alert raised [warning] margin below 20 blocks",
        "alert escalated [critical] margin below 5 blocks",
        "alert resolved: margin:loan-7",
        "alert reopened [warning] margin below 20 blocks",
    ]
    with pytest.raises(ValueError, match="severity"):
        _raise(severity="catastrophic")


@pytest.mark.django_db
def test_no_notification_when_the_transaction_rolls_back(
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.db import transaction

    def failing_caller() -> None:
        with transaction.atomic():
            _raise()
            raise RuntimeError("the caller failed")

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
    ):
        failing_caller()
    assert callbacks == []
    assert not Alert.objects.exists()


@pytest.mark.django_db
def test_email_and_webhook_delivery(settings: Any, webhook: WebhookReceiver) -> None:
    settings.ALERT_EMAILS = ["desk@example.com"]
    alert = _raise(loan_ref=7)
    assert alert_email_deliver(alert_id=alert.pk, event="raised") == 1
    assert mail.outbox[0].to == ["desk@example.com"]
    assert mail.outbox[0].subject == "[btcloan warning] margin below 20 blocks"

    assert alert_webhook_deliver(alert_id=alert.pk, event="raised") == 204
    webhook.status = 500
    with pytest.raises(WebhookError, match="HTTP 500"):
        alert_webhook_deliver(alert_id=alert.pk, event="raised")


@pytest.mark.celery_worker
def test_the_webhook_is_posted_by_a_worker_after_commit(
    webhook: WebhookReceiver, celery_worker_process: Any
) -> None:
    _raise(details={"margin": 19}, loan_ref=7)  # autocommit: on_commit runs at once
    assert webhook.arrived.wait(timeout=30), "no webhook POST arrived"
    (received,) = webhook.received
    assert received["content_type"] == "application/json"
    assert {
        k: received[k] for k in ("event", "key", "severity", "loan_ref", "count", "details")
    } == {
        "event": "raised",
        "key": "margin:loan-7",
        "severity": "warning",
        "loan_ref": "7",
        "count": 1,
        "details": {"margin": 19},
    }


@pytest.mark.django_db
def test_admin_acknowledge_is_recorded() -> None:
    operator = get_user_model().objects.create_superuser("boss", password="pw-long-enough-1")
    alert = _raise()
    client = Client()
    client.force_login(operator)
    page = client.get("/admin/btcloan/alert/")
    assert page.status_code == 200
    assert b"margin below 20 blocks" in page.content
    response = client.post(
        "/admin/btcloan/alert/", {"action": "acknowledge", "_selected_action": [alert.pk]}
    )
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.acknowledged_by == operator
    assert alert.acknowledged_at is not None
    assert client.get(f"/admin/btcloan/alert/{alert.pk}/change/").status_code == 200
