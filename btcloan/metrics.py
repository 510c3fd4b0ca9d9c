"""Prometheus metrics, served at /metrics.

The figures the desk is watched by live in the database, written by workers in other processes,
so they are gauges computed at scrape time: apps register a scrape hook (a function that sets
these gauges from the database) with `register_scrape_hook`, or a whole prometheus-client
collector with `register_collector`, typically from `AppConfig.ready`. A hook that fails is
logged and counted; the scrape still answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

INDEXER_LAG_BLOCKS = Gauge(
    "btcloan_indexer_lag_blocks",
    "Blocks between the chain tip and the last block the indexer processed.",
    ["chain"],
    registry=REGISTRY,
)
EVENTS_PENDING = Gauge(
    "btcloan_events_pending",
    "Chain events recorded but not yet consumed.",
    ["chain"],
    registry=REGISTRY,
)
EVENTS_FAILED = Gauge(
    "btcloan_events_failed",
    "Chain events parked after exhausting their retries.",
    ["chain"],
    registry=REGISTRY,
)
WORKFLOW_FAILURES = Gauge(
    "btcloan_workflow_failures",
    "Workflows currently failed, by workflow type.",
    ["workflow_type"],
    registry=REGISTRY,
)
BROADCASTS = Gauge(
    "btcloan_broadcasts",
    "Transactions broadcast, by chain and result (accepted, rejected, confirmed, ...).",
    ["chain", "result"],
    registry=REGISTRY,
)
DEADLINE_MARGIN_BLOCKS = Gauge(
    "btcloan_deadline_margin_blocks",
    "Smallest margin, in that chain's blocks, between now and the next deadline among open "
    "loans (absent when no loan is open).",
    ["chain"],
    registry=REGISTRY,
)
ALERTS_OPEN = Gauge(
    "btcloan_alerts_open", "Open alerts, by severity.", ["severity"], registry=REGISTRY
)
SCRAPE_HOOK_FAILURES = Counter(
    "btcloan_metrics_hook_failures",
    "Scrape hooks that raised, by hook.",
    ["hook"],
    registry=REGISTRY,
)

ScrapeHook = Callable[[], None]
_HOOKS: dict[str, ScrapeHook] = {}


def register_scrape_hook(name: str, hook: ScrapeHook) -> None:
    """Run `hook` before every scrape (it sets gauges from the database). Replaces by name."""
    _HOOKS[name] = hook


def register_collector(collector: Collector) -> None:
    """Add a prometheus-client collector whose `collect()` runs at scrape time."""
    REGISTRY.register(collector)


def render() -> bytes:
    """Run the scrape hooks, then the text exposition of every metric."""
    for name, hook in list(_HOOKS.items()):
        try:
            hook()
        except Exception:
            logger.exception("metrics scrape hook %s failed", name)
            SCRAPE_HOOK_FAILURES.labels(hook=name).inc()
    return generate_latest(REGISTRY)


def _alerts_hook() -> None:
    from django.db.models import Count

    from btcloan.models import Alert, AlertSeverity

    counts = dict(
        Alert.objects.filter(resolved_at__isnull=True)
        .values_list("severity")
        .annotate(n=Count("id"))
        .values_list("severity", "n")
    )
    for severity in AlertSeverity.values:
        ALERTS_OPEN.labels(severity=severity).set(counts.get(severity, 0))


register_scrape_hook("alerts", _alerts_hook)
