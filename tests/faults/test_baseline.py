"""The undisturbed runs every fault scenario is compared with (recorded first: pytest runs
this module before the others of the directory)."""

from __future__ import annotations

import pytest

from tests.faults.lifecycle import DEFAULTED, FINAL, REPAID, STEPS, Landed, Lifecycle, ledger
from tests.faults.scenario import BASELINE_BORROWER, BASELINES
from tests.support.desk import Desk

pytestmark = [pytest.mark.faults, pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]


@pytest.mark.parametrize("path", [REPAID, DEFAULTED])
def test_undisturbed(desk: Desk, path: str):
    steps: list[str] = []

    def record(step: str, landed: Landed) -> None:
        steps.append(step)

    onchain_id = Lifecycle(desk, path, record, borrower_key=BASELINE_BORROWER).run()
    BASELINES[path] = ledger(desk, onchain_id)
    assert steps == list(STEPS[path])
    assert BASELINES[path]["final"] == FINAL[path]
    assert BASELINES[path]["evm_events_undelivered"] == 0
    assert BASELINES[path]["workflows_doubled"] == 0
    print(path, BASELINES[path])
