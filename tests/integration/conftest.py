"""Fixtures of the integration lane: the desk of `tests/support/desk.py` on the session's
anvil and Bitcoin node, with pytest-django's settings and database.

Celery tasks the backend enqueues are captured and run in-process by `Desk.pump`, in the
order they were sent, so a scenario is deterministic; the live-worker lanes are tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3

from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.driver import LenderActions
from chainwatch.evm.flavour import ContractFlavour
from tests.support.desk import (
    LENDER_BTC_SECRET,
    NETWORK,
    TIMELOCKS,
    Borrower,
    Desk,
    capture_tasks,
    desk_chains,
    known,
)

# The scenarios import these from here.
__all__ = ["LENDER_BTC_SECRET", "NETWORK", "TIMELOCKS", "Borrower", "Desk", "known"]


@pytest.fixture
def desk(
    w3: Web3,
    bitcoin_node: Any,
    settings: Any,
    transactional_db: None,
    redis_client: Any,
    flavour: str,
) -> Iterator[Desk]:
    with (
        desk_chains(w3, bitcoin_node, settings, ContractFlavour(flavour)) as chains,
        capture_tasks(
            Desk(
                w3=w3,
                node=bitcoin_node,
                rpc=chains.rpc,
                deployed=chains.deployed,
                faucet=chains.faucet,
            )
        ) as desk,
    ):
        yield desk


@pytest.fixture
def lender_actions(desk: Desk) -> LenderActions:
    return LenderActions(desk.deployed.contracts, ANVIL_DEFAULT_KEYS[0])
