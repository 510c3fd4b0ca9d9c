"""The same Celery task delivered twice at once, from each step of a lifecycle to the next:
the loan ends as an undisturbed one does, with nothing done twice (in-process backend)."""

from __future__ import annotations

import pytest

from tests.faults.duplicates import ConcurrentDuplicates
from tests.faults.lifecycle import DEFAULTED, REPAID, STEPS
from tests.faults.scenario import run_scenario
from tests.support.desk import Desk

pytestmark = [pytest.mark.faults, pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]

# The request's intake runs in the window that opens at the escrow step (the borrower
# requests and funds at once), so "request" has no window of its own.
CASES = [
    *((REPAID, step) for step in STEPS[REPAID] if step != "request"),
    *((DEFAULTED, step) for step in ("default", "sweep")),
]


@pytest.mark.parametrize(("path", "step"), CASES)
def test_concurrent_duplicate_deliveries(desk: Desk, path: str, step: str):
    fault = ConcurrentDuplicates(step)
    try:
        run_scenario(desk, path, fault)
    finally:
        fault.stop()
    assert fault.doubled, "no task was delivered twice: the scenario proves nothing"
    print(f"doubled {sum(fault.doubled.values())} deliveries; copies that failed: {fault.failed}")
