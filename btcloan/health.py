"""Health probes: a small registry the health endpoint runs in order.

Built in: database, broker. Apps add theirs from `AppConfig.ready` with
`register_probe(name, probe)` (chainwatch: the EVM node and indexer lag; bitcoin: the Bitcoin
node and scanner lag). A probe returns a `ProbeResult` (or raises: that is "down", reported
by exception type only, since messages can carry URLs). Details are small and never contain
URLs, credentials or keys.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from django.conf import settings

logger = logging.getLogger(__name__)

JsonScalar = str | int | bool | None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str = ""
    data: Mapping[str, JsonScalar] = field(default_factory=dict)


Probe = Callable[[], ProbeResult]


@dataclass(frozen=True)
class _Registered:
    probe: Probe
    critical: bool


_PROBES: dict[str, _Registered] = {}


def register_probe(name: str, probe: Probe, *, critical: bool = True) -> None:
    """Add (or replace) a probe. A non-critical failing probe makes the status "degraded" but
    keeps HTTP 200; settings.HEALTH_NONCRITICAL_PROBES demotes probes by name."""
    _PROBES[name] = _Registered(probe, critical)


def unregister_probe(name: str) -> None:
    _PROBES.pop(name, None)


def registered_probes() -> list[str]:
    return list(_PROBES)


@dataclass(frozen=True)
class ProbeReport:
    name: str
    ok: bool
    critical: bool
    detail: str
    data: Mapping[str, JsonScalar]
    duration_ms: int


@dataclass(frozen=True)
class HealthReport:
    status: str  # "ok" | "degraded" | "down"
    probes: list[ProbeReport]

    @property
    def healthy(self) -> bool:
        return self.status != "down"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from or during (clients wrap socket errors)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        if isinstance(current, urllib.error.URLError) and isinstance(current.reason, OSError):
            chain.append(current.reason)
        current = current.__cause__ or current.__context__
    return chain


def _failure_detail(exc: BaseException) -> str:
    """A short reason without the exception's message (it may hold a URL with credentials)."""
    causes = _causes(exc)
    for cause in causes:
        if isinstance(cause, TimeoutError | socket.timeout):
            return "timed out"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return f"unreachable: {cause.strerror}"
    return f"failed: {type(exc).__name__}"


def run_probes() -> HealthReport:
    noncritical = set(getattr(settings, "HEALTH_NONCRITICAL_PROBES", ()))
    reports: list[ProbeReport] = []
    for name, registered in list(_PROBES.items()):
        critical = registered.critical and name not in noncritical
        started = time.monotonic()
        try:
            result = registered.probe()
        except Exception as exc:
            logger.warning("health probe %s failed: %s", name, type(exc).__name__)
            result = ProbeResult(False, _failure_detail(exc))
        reports.append(
            ProbeReport(
                name=name,
                ok=result.ok,
                critical=critical,
                detail=result.detail,
                data=dict(result.data),
                duration_ms=int((time.monotonic() - started) * 1000),
            )
        )
    if any(not r.ok and r.critical for r in reports):
        status = "down"
    elif any(not r.ok for r in reports):
        status = "degraded"
    else:
        status = "ok"
    return HealthReport(status, reports)


# --- Built-in probes -------------------------------------------------------------------------
def database_probe() -> ProbeResult:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return ProbeResult(True, connection.vendor)


def broker_probe() -> ProbeResult:
    url: str = settings.CELERY_BROKER_URL
    timeout = settings.HEALTH_PROBE_TIMEOUT
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return ProbeResult(True, "redis answered PING")
    if url.startswith("filesystem://"):
        folder = settings.VAR_DIR / "broker"
        if folder.is_dir() and os.access(folder, os.W_OK):
            return ProbeResult(True, "filesystem broker folder is writable")
        return ProbeResult(False, "filesystem broker folder is missing or read-only")
    return ProbeResult(True, "in-memory broker")


register_probe("database", database_probe)
register_probe("broker", broker_probe)
