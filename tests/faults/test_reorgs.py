"""EVM reorgs of depth 1-5 and Bitcoin reorgs of depth 1-3 at each step of a lifecycle: the
loan ends as an undisturbed one does, with every event, transaction and transition once.

The backend runs in-process (`Desk.pump`), so the reorg lands exactly where it is meant to:
the step's block is the first one replaced, with the backend having acted on what it saw.
"""

from __future__ import annotations

import pytest

from tests.faults.chains import BitcoinReorg, EvmReorg
from tests.faults.lifecycle import DEFAULTED, REPAID
from tests.faults.scenario import run_scenario
from tests.support.desk import Desk

pytestmark = [pytest.mark.faults, pytest.mark.evm, pytest.mark.bitcoin_node, pytest.mark.slow]

EVM_CASES = [
    *((REPAID, step) for step in ("request", "offer", "activation", "repayment", "acceptance")),
    (DEFAULTED, "default"),
]
BITCOIN_CASES = [
    *((REPAID, step) for step in ("escrow", "collateral", "release")),
    *((DEFAULTED, step) for step in ("collateral", "sweep")),
]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(("path", "step"), EVM_CASES)
def test_evm_reorg(desk: Desk, path: str, step: str, depth: int):
    fault = EvmReorg(desk, step, depth)
    run_scenario(desk, path, fault)
    assert len(fault.done) == 1, "the reorg never happened"


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(("path", "step"), BITCOIN_CASES)
def test_bitcoin_reorg(desk: Desk, path: str, step: str, depth: int):
    fault = BitcoinReorg(desk, step, depth)
    run_scenario(desk, path, fault)
    assert len(fault.done) == 1, "the reorg never happened"
