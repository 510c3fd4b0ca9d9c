"""A fault scenario: the lifecycle with a fault at one step, compared with an undisturbed run.

The undisturbed run of each path is recorded once per session (`test_baseline.py` runs first;
a scenario selected alone records it itself, on its own desk, with another borrower).
"""

from __future__ import annotations

from typing import Any

from tests.faults.lifecycle import FINAL, Hook, Lifecycle, ledger, no_fault
from tests.support.desk import Desk

BASELINES: dict[str, dict[str, Any]] = {}
BASELINE_BORROWER = 2
SCENARIO_BORROWER = 1


def baseline(desk: Desk, path: str) -> dict[str, Any]:
    if path not in BASELINES:
        onchain_id = Lifecycle(desk, path, borrower_key=BASELINE_BORROWER).run()
        BASELINES[path] = ledger(desk, onchain_id)
    return BASELINES[path]


def run_scenario(desk: Desk, path: str, hook: Hook = no_fault) -> dict[str, Any]:
    """Drive the loan with the fault, then check it ended as the undisturbed run did, with the
    same counts of events, transactions, lender calls and transitions."""
    expected = baseline(desk, path)
    onchain_id = Lifecycle(desk, path, hook, borrower_key=SCENARIO_BORROWER).run()
    getattr(desk, "settle", desk.pump)()  # anything a fault left pending would show now
    got = ledger(desk, onchain_id)
    status, stage = FINAL[path]
    assert got["final"] == (status, stage)
    differences = {
        key: {"expected": expected.get(key), "got": got.get(key)}
        for key in sorted(set(got) | set(expected))
        if got.get(key) != expected.get(key)
    }
    assert not differences, f"the disturbed run differs from the undisturbed one: {differences}"
    return got
