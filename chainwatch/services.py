"""chainwatch: services (writes). The indexer and the outbox live in their packages; this is
the app's public surface for tasks, commands, the admin and `loans`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings

from btcloan.alerts.services import alert_raise
from btcloan.locks import single_flight
from btcloan.models import AlertSeverity
from chainwatch.client import NodeUnavailable, RPCError, get_web3
from chainwatch.indexer.config import watch_config
from chainwatch.indexer.consumer import EventConsumer, register_event_consumer
from chainwatch.indexer.delivery import (
    DeliverySummary,
    deliver_events,
    event_retry,
    reorg_notice_retry,
)
from chainwatch.indexer.sync import IndexSummary, ReorgTooDeep, index_pass, replay_range
from chainwatch.outbox.services import (
    evm_transaction_enqueue,
    evm_transaction_send,
    evm_transactions_pump,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EventConsumer",
    "chain_replay",
    "chain_sync",
    "event_retry",
    "events_deliver",
    "evm_transaction_enqueue",
    "evm_transaction_send",
    "evm_transactions_pump",
    "register_event_consumer",
    "reorg_notice_retry",
]


@dataclass
class SyncResult:
    status: str  # ok | busy | node_unavailable
    index: IndexSummary | None = None
    delivery: DeliverySummary | None = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync_lock_name(chain_id: int) -> str:
    return f"chainwatch-sync-{chain_id}"


def chain_sync(*, deliver: bool = True, max_seconds: float | None = None) -> SyncResult:
    """One pass of the poller, single-flight per chain: index the confirmed blocks, then hand
    pending events on. A node that is down is logged and retried by the next pass; events
    already stored are still delivered."""
    cfg = watch_config()
    budget = max_seconds or settings.CHAINWATCH_PASS_SECONDS
    with single_flight(sync_lock_name(cfg.chain_id), timeout=2 * budget + 60) as acquired:
        if not acquired:
            return SyncResult(status="busy")
        result = SyncResult(status="ok")
        try:
            result.index = index_pass(get_web3(), cfg, max_seconds=budget)
        except NodeUnavailable as exc:
            logger.warning("chainwatch: EVM node unavailable, retrying next pass: %s", exc)
            result.status, result.error = "node_unavailable", str(exc)
        except ReorgTooDeep as exc:
            logger.error("ALERT chainwatch: %s", exc)
            alert_raise(
                key=f"chainwatch:reorg-too-deep:{cfg.chain_id}",
                severity=AlertSeverity.CRITICAL,
                title="EVM reorg deeper than the kept block hashes: indexing stopped",
                details={"error": str(exc)},
            )
            result.status, result.error = "reorg_too_deep", str(exc)
        except RPCError as exc:  # e.g. a node still syncing; the next pass tries again
            logger.warning("chainwatch: EVM node error, retrying next pass: %s", exc)
            result.status, result.error = "node_error", str(exc)
        if deliver:
            result.delivery = deliver_events(chain_id=cfg.chain_id, max_seconds=budget)
            if not result.delivery.consumer:
                logger.info("chainwatch: no event consumer registered; events wait, pending")
        return result


def events_deliver(*, max_seconds: float | None = None) -> DeliverySummary:
    """Hand pending events on without indexing (single-flight with the poller)."""
    cfg = watch_config()
    budget = max_seconds or settings.CHAINWATCH_PASS_SECONDS
    with single_flight(sync_lock_name(cfg.chain_id), timeout=2 * budget + 60) as acquired:
        if not acquired:
            return DeliverySummary(consumer=False)
        return deliver_events(chain_id=cfg.chain_id, max_seconds=budget)


def chain_replay(
    *,
    from_block: int,
    to_block: int | None = None,
    on_window: Callable[[int, int, IndexSummary], None] | None = None,
) -> IndexSummary:
    """Re-index [from_block, to_block ∧ cursor]: inserts only what is missing. Holds the
    poller's lock (expiring after an hour should the replay die), so the two never interleave."""
    cfg = watch_config()
    with single_flight(sync_lock_name(cfg.chain_id), timeout=3600) as acquired:
        if not acquired:
            raise RuntimeError("the chainwatch poller is running; try again in a moment")
        return replay_range(get_web3(), cfg, first=from_block, last=to_block, on_window=on_window)
