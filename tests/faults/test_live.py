"""Process-level faults against a live backend (`celery worker` + `celery beat` processes):
kill -9 of the worker and of beat at seeded random points, PostgreSQL "restarted", a Redis
flush, and the EVM or Bitcoin node unreachable for a while, each at one step of a lifecycle.

PostgreSQL is not restarted (other engineers' tests share the machine's cluster): every
connection of the test database is terminated with `pg_terminate_backend`, which is what the
application sees when the server restarts. Redis: FLUSHDB of the test's own db only.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.lifecycle import DEFAULTED, REPAID
from tests.faults.live import Backend, LiveDesk
from tests.faults.processes import FAULTS, AtStep
from tests.faults.scenario import run_scenario

pytestmark = [
    pytest.mark.faults,
    pytest.mark.evm,
    pytest.mark.bitcoin_node,
    pytest.mark.celery_worker,
    pytest.mark.slow,
]

# The seeds are fixed so a failure replays; BTCLOAN_FAULT_SEED shifts them all to explore.
SEED_OFFSET = int(os.environ.get("BTCLOAN_FAULT_SEED", "0"))

# Each fault at the steps where it bites most differently (the whole lifecycle runs every
# time); the seed places the fault within the step. Bitcoin-side faults run on both paths.
CASES = [
    ("kill_worker", REPAID, "request", 1),
    ("kill_worker", REPAID, "activation", 2),
    ("kill_worker", REPAID, "repayment", 3),
    ("kill_beat", REPAID, "offer", 4),
    ("kill_beat", REPAID, "acceptance", 5),
    ("postgres_restart", REPAID, "offer", 6),
    ("postgres_restart", REPAID, "repayment", 7),
    ("redis_flush", REPAID, "activation", 8),
    ("redis_flush", REPAID, "acceptance", 9),
    ("evm_node_down", REPAID, "request", 10),
    ("evm_node_down", REPAID, "repayment", 11),
    ("bitcoin_node_down", REPAID, "collateral", 12),
    ("bitcoin_node_down", REPAID, "release", 13),
    ("bitcoin_node_down", DEFAULTED, "collateral", 14),
    ("bitcoin_node_down", DEFAULTED, "sweep", 15),
]


@pytest.mark.parametrize(("fault", "path", "step", "seed"), CASES)
def test_live_fault(live: tuple[LiveDesk, Backend], fault: str, path: str, step: str, seed: int):
    desk, backend = live
    hook = AtStep(desk, backend, step, FAULTS[fault], seed + SEED_OFFSET)
    run_scenario(desk, path, hook)
    assert hook.done, "the fault was never injected"
    print(f"{fault} at {step}: {hook.done}; {backend.events}")
