"""Fixtures of the integration lane: the desk of `tests/support/desk.py` on the session's
anvil and Bitcoin node, with pytest-django's settings and database.

Celery tasks the backend enqueues are captured and run in-process by `Desk.pump`, in the
order they were sent, so a scenario is deterministic; the live-worker lanes are tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from web3 import Web3

import vaultero
from bitcoin import signer as signer_module
from bitcoin.rpc import BitcoinRPC, set_client
from btcloan.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.client import use_web3
from chainwatch.evm.driver import LenderActions
from chainwatch.evm.testing import deploy_for_tests
from tests.support.desk import (
    LENDER_BTC_SECRET,
    NETWORK,
    TIMELOCKS,
    Borrower,
    Desk,
    capture_tasks,
    desk_settings,
    known,
)

# The scenarios import these from here.
__all__ = ["LENDER_BTC_SECRET", "NETWORK", "TIMELOCKS", "Borrower", "Desk", "known"]


@pytest.fixture
def desk(
    w3: Web3, bitcoin_node: Any, settings: Any, transactional_db: None, redis_client: Any
) -> Iterator[Desk]:
    deployed = deploy_for_tests(
        w3,
        parameters=TIMELOCKS,
        lender_btc_pubkey=vaultero.xonly_public_key(LENDER_BTC_SECRET),
    )
    overrides = desk_settings(
        evm_url=w3.provider.endpoint_uri,  # type: ignore[attr-defined]
        deployed=deployed,
        bitcoin_url=bitcoin_node.url,
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    use_web3(w3)
    rpc = BitcoinRPC(bitcoin_node.url)
    set_client(rpc)
    signer_module.set_signer(None)
    cache.clear()
    faucet = str(bitcoin_node.rpc("getnewaddress"))
    bitcoin_node.rpc("generatetoaddress", 110, faucet)
    try:
        with capture_tasks(
            Desk(w3=w3, node=bitcoin_node, rpc=rpc, deployed=deployed, faucet=faucet)
        ) as desk:
            yield desk
    finally:
        use_web3(None)
        set_client(None)
        signer_module.set_signer(None)
        cache.clear()


@pytest.fixture
def lender_actions(desk: Desk) -> LenderActions:
    return LenderActions(desk.deployed.contracts, ANVIL_DEFAULT_KEYS[0])
