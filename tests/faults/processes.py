"""Faults of the processes and stores around the backend, placed at a step of a lifecycle
whose lender is a live worker and beat (`tests/faults/live.py`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import connection

from tests.faults.lifecycle import Landed
from tests.faults.live import Backend, LiveDesk

Injection = Callable[[LiveDesk, Backend, random.Random], str]


@dataclass
class AtStep:
    """Runs `inject` once, when the lifecycle reaches `step`, after a seeded random pause
    (so the fault lands somewhere in what the backend is doing about that step)."""

    desk: LiveDesk
    backend: Backend
    step: str
    inject: Injection
    seed: int = 0
    done: list[str] = field(default_factory=list)

    def __call__(self, step: str, landed: Landed) -> None:
        if step != self.step:
            return
        chance = random.Random(f"{self.seed}:{self.step}")
        time.sleep(chance.uniform(0, 1.5))
        self.done.append(self.inject(self.desk, self.backend, chance))


def kill_worker(desk: LiveDesk, backend: Backend, chance: random.Random) -> str:
    backend.kill9("worker")
    backend.expire_locks()
    _keep_mining(desk, seconds=chance.uniform(0.5, 2.5))
    backend.restart("worker")
    return "worker killed with SIGKILL and started again"


def kill_beat(desk: LiveDesk, backend: Backend, chance: random.Random) -> str:
    backend.kill9("beat")
    _keep_mining(desk, seconds=chance.uniform(0.5, 2.5))
    backend.restart("beat")
    return "beat killed with SIGKILL and started again"


def terminate_database_connections(desk: LiveDesk, backend: Backend, chance: random.Random) -> str:
    """What the backend sees when PostgreSQL restarts: every connection to its database is
    terminated by the server (the machine's cluster itself keeps running: others use it)."""
    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        (terminated,) = cursor.fetchone()
    connection.close()  # and the test's own, as the server would
    return f"terminated {terminated} connections to {name} (and the test's own)"


def flush_redis(desk: LiveDesk, backend: Backend, chance: random.Random) -> str:
    """FLUSHDB of the test's own Redis db: the broker's queues, results, locks and cache."""
    db = backend.redis.connection_pool.connection_kwargs.get("db")
    keys = backend.redis.dbsize()
    backend.redis.flushdb()
    return f"flushed Redis db {db} ({keys} keys)"


def evm_node_down(desk: LiveDesk, backend: Backend, chance: random.Random) -> str:
    return _outage(desk, backend, "evm", chance.uniform(3, 6))


def bitcoin_node_down(desk: LiveDesk, backend: Backend, chance: random.Random) -> str:
    return _outage(desk, backend, "btc", chance.uniform(3, 6))


def _outage(desk: LiveDesk, backend: Backend, chain: str, seconds: float) -> str:
    """The backend's link to the node is cut (connections refused and reset) while the node
    itself goes on; then it comes back."""
    relay = backend.evm_relay if chain == "evm" else backend.btc_relay
    relay.down()
    try:
        _keep_mining(desk, seconds=seconds)
    finally:
        relay.up()
    return f"{chain} node unreachable for {seconds:.1f} s"


def _keep_mining(desk: LiveDesk, *, seconds: float) -> None:
    """The networks go on meanwhile: a Bitcoin block a tick, EVM blocks while a transaction
    still lacks its confirmations."""
    deadline = time.monotonic() + seconds
    desk.until(lambda: time.monotonic() >= deadline, btc=1)


FAULTS: dict[str, Injection] = {
    "kill_worker": kill_worker,
    "kill_beat": kill_beat,
    "postgres_restart": terminate_database_connections,
    "redis_flush": flush_redis,
    "evm_node_down": evm_node_down,
    "bitcoin_node_down": bitcoin_node_down,
}
