"""chainwatch: tasks. Thin: one service call each, a small summary out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task
from celery.utils.log import get_task_logger

from btcloan.locks import single_flight
from chainwatch.client import NodeUnavailable
from chainwatch.indexer.config import NoContracts
from chainwatch.outbox.services import (
    evm_transaction_send,
    evm_transaction_track,
    evm_transactions_pump,
)
from chainwatch.services import chain_sync

logger = get_task_logger(__name__)


@shared_task(name="chainwatch.poll", ignore_result=True)
def poll() -> dict[str, Any]:
    """The beat's poller: index confirmed blocks, hand events on (single-flight per chain)."""
    try:
        result = chain_sync()
    except NoContracts as exc:  # before deploy_contracts: quiet, not an error every beat
        logger.info("chainwatch: %s", exc)
        return {"status": "not_configured"}
    return {
        "status": result.status,
        "indexed_to": result.index.indexed_to if result.index else None,
        "inserted": result.index.inserted if result.index else 0,
        "delivered": result.delivery.delivered if result.delivery else 0,
    }


@shared_task(
    name="chainwatch.send_evm_transaction",
    autoretry_for=(NodeUnavailable,),
    retry_backoff=True,
    max_retries=8,
    acks_late=True,  # idempotent: the row's status and its signed bytes decide what is left
)
def send_evm_transaction(tx_id: int) -> dict[str, Any]:
    tx = evm_transaction_send(tx_id=tx_id)
    return {"id": tx.pk, "status": tx.status, "nonce": tx.nonce}


@shared_task(
    name="chainwatch.track_evm_transaction",
    autoretry_for=(NodeUnavailable,),
    retry_backoff=True,
    max_retries=8,
)
def track_evm_transaction(tx_id: int) -> dict[str, Any]:
    tx = evm_transaction_track(tx_id=tx_id)
    return {"id": tx.pk, "status": tx.status}


@shared_task(name="chainwatch.outbox_pump", ignore_result=True)
def outbox_pump() -> dict[str, Any]:
    """The beat's outbox sweep: send what is waiting, follow what is sent (single-flight)."""
    with single_flight("chainwatch-outbox", timeout=300) as acquired:
        if not acquired:
            return {"status": "busy"}
        try:
            return {"status": "ok", **asdict(evm_transactions_pump())}
        except NodeUnavailable as exc:
            return {"status": "node_unavailable", "error": str(exc)}
