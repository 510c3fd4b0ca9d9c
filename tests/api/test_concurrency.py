"""Races decided by the database: one nonce signs in once; one open alert per key."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from eth_account import Account

from btcloan.alerts.services import alert_raise
from btcloan.api.errors import ApiError
from btcloan.api.services import sign_in_nonce_issue, wallet_sign_in
from btcloan.models import AccessToken, Alert
from tests.api.conftest import sign

pytestmark = pytest.mark.django_db(transaction=True)


def _race(action: Callable[[], Any], threads: int = 4) -> list[Any]:
    """Run `action` in `threads` threads released together; each result or exception."""
    barrier = threading.Barrier(threads)
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            outcome: Any = action()
        except Exception as exc:
            outcome = exc
        finally:
            connection.close()
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return results


def test_concurrent_logins_with_one_nonce_sign_in_once() -> None:
    wallet = Account.create()
    issued = sign_in_nonce_issue(address=wallet.address)
    signature = sign(wallet, issued.message)
    results = _race(lambda: wallet_sign_in(message=issued.message, signature=signature))
    refused = [r for r in results if isinstance(r, ApiError)]
    assert len(results) == 4
    assert len(refused) == 3, results
    assert {r.error_code for r in refused} == {"nonce_used"}
    assert AccessToken.objects.count() == 1


def test_concurrent_raises_of_one_key_make_one_alert() -> None:
    results = _race(lambda: alert_raise(key="k", severity="warning", title="t"))
    assert not [r for r in results if isinstance(r, Exception)], results
    alert = Alert.objects.get()
    assert alert.count == 4
