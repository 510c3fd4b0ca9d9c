"""bitcoin: tasks. Thin: ids in, one service call, a small summary out."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.utils import timezone

from bitcoin.facts import facts_deliver
from bitcoin.models import BitcoinFact
from bitcoin.rpc import NodeUnavailable
from bitcoin.selectors import cpfp_candidates
from bitcoin.services import (
    chain_scan,
    transaction_broadcast,
    transaction_bump_cpfp,
    transactions_refresh,
)
from btcloan.locks import single_flight

logger = logging.getLogger(__name__)


@shared_task(name="bitcoin.scan", ignore_result=True)
def scan() -> dict[str, Any]:
    """The beat's scanner: new blocks, the mempool, depths (single-flight); then facts out.
    A node that is down is retried by the next beat."""
    with single_flight("bitcoin-scan", timeout=600) as acquired:
        if not acquired:
            return {"status": "busy"}
        try:
            summary = chain_scan()
        except NodeUnavailable as exc:
            logger.warning("bitcoin scan: node unavailable, next beat retries: %s", exc)
            return {"status": "node_unavailable"}
    if summary.facts:
        deliver_facts.delay()
    return {"status": "ok", **summary.as_dict()}


@shared_task(name="bitcoin.deliver_facts", ignore_result=True)
def deliver_facts() -> dict[str, Any]:
    with single_flight("bitcoin-facts", timeout=600) as acquired:
        if not acquired:
            return {"status": "busy"}
        result = facts_deliver()
    if result["delivered"] and result["pending"]:
        deliver_facts.delay()  # more than one run's worth waiting
    return {"status": "ok", **result}


@shared_task(
    name="bitcoin.broadcast",
    autoretry_for=(NodeUnavailable,),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=12,
    acks_late=True,  # idempotent: the row's status decides, the node dedupes by txid
)
def broadcast(tx_id: int) -> dict[str, Any]:
    result = transaction_broadcast(tx_id=tx_id)
    return {"txid": result.txid, "outcome": result.outcome, "reason": result.reason}


@shared_task(name="bitcoin.monitor", ignore_result=True)
def monitor() -> dict[str, Any]:
    """The beat's monitoring of open transactions and watched outpoints (single-flight):
    rebroadcast what fell out, CPFP what is stuck."""
    with single_flight("bitcoin-monitor", timeout=600) as acquired:
        if not acquired:
            return {"status": "busy"}
        try:
            summary = transactions_refresh()
        except NodeUnavailable as exc:
            logger.warning("bitcoin monitor: node unavailable: %s", exc)
            return {"status": "node_unavailable"}
    for tx_id in summary.rebroadcast:
        broadcast.delay(tx_id)
    bumps = list(cpfp_candidates(now=timezone.now()).values_list("pk", flat=True))
    for tx_id in bumps:
        bump_cpfp.delay(tx_id)
    if BitcoinFact.objects.filter(delivered_at__isnull=True).exists():
        deliver_facts.delay()  # facts a handler refused are offered again, once per interval
    return {"status": "ok", "cpfp": len(bumps), **summary.as_dict()}


@shared_task(
    name="bitcoin.bump_cpfp",
    autoretry_for=(NodeUnavailable,),
    retry_backoff=True,
    max_retries=8,
)
def bump_cpfp(tx_id: int) -> dict[str, Any]:
    child = transaction_bump_cpfp(tx_id=tx_id)  # committed when it returns
    if child is not None:
        broadcast.delay(child.pk)
    return {"parent": tx_id, "child": child.txid if child else None}
