"""chainwatch's figures for /metrics and its health probes: how far the indexer is behind the
node, events waiting or parked, and the lender's EVM outbox by result.

The lag needs the node's head, and the poller does not record the heads it sees: it is read at
scrape (or probe) time with one `eth_blockNumber` bounded by HEALTH_PROBE_TIMEOUT. The rest
is one grouped query per table. The node is asked through the process's web3 client
(`chainwatch.client.get_web3`, with the probe timeout). Registered from `ChainwatchConfig.ready`,
with the `evm_node` probe.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count

from btcloan.health import ProbeResult
from btcloan.metrics import BROADCASTS, EVENTS_FAILED, EVENTS_PENDING, INDEXER_LAG_BLOCKS
from chainwatch.client import ChainIdMismatch, NodeUnavailable, RPCError, get_web3, rpc
from chainwatch.models import (
    ChainCursor,
    DeliveryStatus,
    EvmEvent,
    EvmTransaction,
    OutboxStatus,
    ReorgNotice,
)

logger = logging.getLogger(__name__)

CHAIN = "evm"
# What a node that is down, slow, confused or on another chain raises through the client.
NODE_ERRORS = (NodeUnavailable, RPCError, ChainIdMismatch, ValueError)


def _node_call(method: str) -> int:
    """One quantity-returning call, bounded by HEALTH_PROBE_TIMEOUT."""
    w3 = get_web3(timeout=settings.HEALTH_PROBE_TIMEOUT)
    return int(rpc(w3, method, []), 16)


@dataclass(frozen=True)
class IndexerLag:
    head: int
    indexed: int
    confirmations: int

    @property
    def lag(self) -> int:
        """Blocks between the node's head and the last indexed block."""
        return max(self.head - self.indexed, 0)

    @property
    def behind(self) -> int:
        """The part of the lag the indexer could have indexed: beyond the confirmations it
        waits for on purpose."""
        return max(self.lag - self.confirmations, 0)


def indexer_lag() -> IndexerLag | None:
    """None before the indexer's first pass; raises NODE_ERRORS when the node does not answer."""
    indexed = (
        ChainCursor.objects.filter(chain_id=settings.EVM_CHAIN_ID)
        .values_list("block_number", flat=True)
        .first()
    )
    if indexed is None:
        return None
    head = _node_call("eth_blockNumber")
    return IndexerLag(head, int(indexed), int(settings.EVM_CONFIRMATIONS))


def _by_status(model: type[EvmEvent] | type[ReorgNotice] | type[EvmTransaction]) -> dict[str, int]:
    return dict(
        model.objects.filter(chain_id=settings.EVM_CHAIN_ID)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )


def scrape() -> None:
    # A reorg notice waits (and blocks its key) exactly like an event: both count.
    events, notices = _by_status(EvmEvent), _by_status(ReorgNotice)
    for gauge, status in (
        (EVENTS_PENDING, DeliveryStatus.PENDING),
        (EVENTS_FAILED, DeliveryStatus.FAILED),
    ):
        gauge.labels(chain=CHAIN).set(events.get(status, 0) + notices.get(status, 0))
    outbox = _by_status(EvmTransaction)
    for result in OutboxStatus.values:
        BROADCASTS.labels(chain=CHAIN, result=result).set(outbox.get(result, 0))

    try:
        lag = indexer_lag()
    except NODE_ERRORS as exc:
        logger.warning("indexer lag unknown: the EVM node did not answer (%s)", type(exc).__name__)
        lag = None
    if lag is None:  # unknown: no sample rather than a stale one
        with suppress(KeyError):
            INDEXER_LAG_BLOCKS.remove(CHAIN)
    else:
        INDEXER_LAG_BLOCKS.labels(chain=CHAIN).set(lag.lag)


def _judge(lag: IndexerLag, limit: int) -> ProbeResult:
    data = {
        "head": lag.head,
        "indexed": lag.indexed,
        "lag_blocks": lag.lag,
        "behind_blocks": lag.behind,
        "limit_blocks": limit,
    }
    detail = f"{lag.behind} blocks behind the confirmed head (limit {limit})"
    return ProbeResult(lag.behind <= limit, detail, data)


def indexer_lag_probe() -> ProbeResult:
    """Non-critical: lagging past HEALTH_INDEXER_LAG_WARN_BLOCKS, not indexed yet, or a node
    that does not answer make the desk "degraded"."""
    lag = indexer_lag()
    if lag is None:
        return ProbeResult(False, "the indexer has not run yet")
    return _judge(lag, settings.HEALTH_INDEXER_LAG_WARN_BLOCKS)


def indexer_far_behind_probe() -> ProbeResult:
    """Critical: past HEALTH_INDEXER_LAG_CRITICAL_BLOCKS. A node that does not answer is the
    evm_node probe's to report (it may be demoted), so here it is not a failure."""
    try:
        lag = indexer_lag()
    except NODE_ERRORS:
        return ProbeResult(True, "head unknown: the EVM node did not answer (see evm_node)")
    if lag is None:
        return ProbeResult(True, "the indexer has not run yet")
    return _judge(lag, settings.HEALTH_INDEXER_LAG_CRITICAL_BLOCKS)


def evm_node_probe() -> ProbeResult:
    """Critical: the node answers and serves EVM_CHAIN_ID. The client checks the chain id
    when it is built; asked again here so an injected or cached client is checked too."""
    expected = int(settings.EVM_CHAIN_ID)
    try:
        chain_id = _node_call("eth_chainId")
    except ChainIdMismatch as exc:
        chain_id = exc.served
    if chain_id != expected:
        return ProbeResult(
            False,
            f"wrong chain: the node is on {chain_id}, expected {expected}",
            {"chain_id": chain_id},
        )
    block = _node_call("eth_blockNumber")
    return ProbeResult(True, "chain id matches", {"chain_id": chain_id, "block": block})
