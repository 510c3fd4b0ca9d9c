"""The Bitcoin coordinator's figures for /metrics and its health probes: how far the scanner is
behind the node's tip, facts waiting for `loans`, and our transactions by result.

The lag needs the node's tip, and the scanner does not record the tips it sees: it is read at
scrape (or probe) time with one `getblockcount` bounded by HEALTH_PROBE_TIMEOUT. The rest is
one grouped query per table. The node is asked through the process's RPC client
(`bitcoin.rpc.get_client`, with the probe timeout). Registered from `BitcoinConfig.ready`, with
the `bitcoin_node` probe.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Q

from bitcoin.models import BitcoinFact, BitcoinTransaction, TxStatus
from bitcoin.rpc import CHAIN_NAMES, BitcoinRPC, BitcoinRPCError, WrongNetwork, get_client
from bitcoin.selectors import scan_cursor
from btcloan.health import JsonScalar, ProbeResult
from btcloan.metrics import BROADCASTS, EVENTS_FAILED, EVENTS_PENDING, INDEXER_LAG_BLOCKS

logger = logging.getLogger(__name__)

CHAIN = "bitcoin"
# What a node that is down, slow, confused or on another network raises through the client.
NODE_ERRORS = (BitcoinRPCError, ValueError)


def _client() -> BitcoinRPC:
    return get_client(timeout=settings.HEALTH_PROBE_TIMEOUT)


@dataclass(frozen=True)
class ScannerLag:
    tip: int
    scanned: int

    @property
    def lag(self) -> int:
        """Blocks between the node's tip and the last block the scanner processed (it scans up
        to the tip: nothing here is waited for on purpose)."""
        return max(self.tip - self.scanned, 0)


def scanner_lag() -> ScannerLag | None:
    """None before the scanner's first pass; raises NODE_ERRORS when the node does not answer."""
    cursor = scan_cursor()
    if cursor is None:
        return None
    return ScannerLag(_client().block_count(), cursor.height)


def scrape() -> None:
    # Facts are never parked: one whose handler raised is retried, and holds back its loan's
    # later facts. "failed" counts those waiting after a failed attempt.
    facts = BitcoinFact.objects.filter(delivered_at__isnull=True).aggregate(
        pending=Count("id"), failed=Count("id", filter=Q(attempts__gt=0))
    )
    EVENTS_PENDING.labels(chain=CHAIN).set(facts["pending"])
    EVENTS_FAILED.labels(chain=CHAIN).set(facts["failed"])
    statuses = dict(
        BitcoinTransaction.objects.values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    for result in TxStatus.values:
        BROADCASTS.labels(chain=CHAIN, result=result).set(statuses.get(result, 0))

    try:
        lag = scanner_lag()
    except NODE_ERRORS as exc:
        logger.warning("scanner lag unknown: the Bitcoin node is silent (%s)", type(exc).__name__)
        lag = None
    if lag is None:  # unknown: no sample rather than a stale one
        with suppress(KeyError):
            INDEXER_LAG_BLOCKS.remove(CHAIN)
    else:
        INDEXER_LAG_BLOCKS.labels(chain=CHAIN).set(lag.lag)


def _judge(lag: ScannerLag, limit: int) -> ProbeResult:
    data = {"tip": lag.tip, "scanned": lag.scanned, "lag_blocks": lag.lag, "limit_blocks": limit}
    return ProbeResult(lag.lag <= limit, f"{lag.lag} blocks behind the tip (limit {limit})", data)


def scanner_lag_probe() -> ProbeResult:
    """Non-critical: lagging past HEALTH_SCANNER_LAG_WARN_BLOCKS, not scanned yet, or a node
    that does not answer make the desk "degraded"."""
    lag = scanner_lag()
    if lag is None:
        return ProbeResult(False, "the scanner has not run yet")
    return _judge(lag, settings.HEALTH_SCANNER_LAG_WARN_BLOCKS)


def scanner_far_behind_probe() -> ProbeResult:
    """Critical: past HEALTH_SCANNER_LAG_CRITICAL_BLOCKS. A node that does not answer is the
    bitcoin_node probe's to report (it may be demoted), so here it is not a failure."""
    try:
        lag = scanner_lag()
    except NODE_ERRORS:
        return ProbeResult(True, "tip unknown: the Bitcoin node did not answer (see bitcoin_node)")
    if lag is None:
        return ProbeResult(True, "the scanner has not run yet")
    return _judge(lag, settings.HEALTH_SCANNER_LAG_CRITICAL_BLOCKS)


def bitcoin_node_probe() -> ProbeResult:
    """Critical: the node answers, is on BITCOIN_NETWORK and (off regtest) is not in initial
    block download. The client checks the network when it is built; asked again here so an
    injected or cached client is checked too."""
    expected = CHAIN_NAMES[settings.BITCOIN_NETWORK]
    try:
        info = _client().blockchain_info()
    except WrongNetwork as exc:
        return ProbeResult(False, f"wrong network: {exc}")
    if info.chain not in expected:
        return ProbeResult(
            False, f"wrong network: the node is on {info.chain}, expected {expected[0]}"
        )
    data: dict[str, JsonScalar] = {"chain": info.chain, "blocks": info.blocks}
    # On regtest a quiet chain looks like IBD forever; elsewhere IBD means not caught up.
    if info.initial_block_download and settings.BITCOIN_NETWORK != "regtest":
        return ProbeResult(False, "initial block download in progress", data)
    return ProbeResult(True, "network matches", data)
