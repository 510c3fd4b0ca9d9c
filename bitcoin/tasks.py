"""bitcoin: tasks. Thin: ids in, one service call, a small summary out."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from bitcoin.facts import facts_deliver
from bitcoin.fees import FeeError
from bitcoin.models import BitcoinFact
from bitcoin.rpc import NodeUnavailable
from bitcoin.selectors import bump_candidates
from bitcoin.services import (
    chain_scan,
    transaction_broadcast,
    transaction_bump,
    transactions_refresh,
    wallet_sync,
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
    if result.outcome == "fee_too_low":  # below the floor, or refused as a replacement
        bump.delay(tx_id)
    return {"txid": result.txid, "outcome": result.outcome, "reason": result.reason}


@shared_task(name="bitcoin.monitor", ignore_result=True)
def monitor() -> dict[str, Any]:
    """The beat's monitoring of open transactions and watched outpoints (single-flight):
    rebroadcast what fell out, follow the lender's wallet, weigh every open TX_1 and sweep
    for a fee bump."""
    with single_flight("bitcoin-monitor", timeout=600) as acquired:
        if not acquired:
            return {"status": "busy"}
        try:
            summary = transactions_refresh()
            wallet = wallet_sync()
        except NodeUnavailable as exc:
            logger.warning("bitcoin monitor: node unavailable: %s", exc)
            return {"status": "node_unavailable"}
    for tx_id in summary.rebroadcast:
        broadcast.delay(tx_id)
    bumps = list(bump_candidates(tip_moved=summary.tip_moved).values_list("pk", flat=True))
    for tx_id in bumps:
        bump.delay(tx_id)
    if BitcoinFact.objects.filter(delivered_at__isnull=True).exists():
        deliver_facts.delay()  # facts a handler refused are offered again, once per interval
    return {"status": "ok", "bump_checks": len(bumps), "wallet": wallet, **summary.as_dict()}


@shared_task(
    name="bitcoin.bump",
    autoretry_for=(NodeUnavailable,),
    retry_backoff=True,
    max_retries=8,
)
def bump(tx_id: int) -> dict[str, Any]:
    """A CPFP child for TX_1 or a re-signed sweep, when deadline risk or a fee refusal asks."""
    try:
        new = transaction_bump(tx_id=tx_id)  # committed when it returns
    except FeeError as exc:
        logger.warning("bitcoin bump of %s: %s", tx_id, exc)
        return {"transaction": tx_id, "bumped": None, "error": str(exc)}
    if new is not None:
        broadcast.delay(new.pk)
    return {"transaction": tx_id, "bumped": new.txid if new else None}
