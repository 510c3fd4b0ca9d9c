"""The bitcoin tasks in a real Celery worker process, on the test run's Redis and PostgreSQL,
talking to the node through a relay the test can cut (the node 'goes down')."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import vaultero
from bitcoin import rpc as rpc_module
from bitcoin import tasks
from bitcoin.models import (
    BitcoinTransaction,
    ObservationStatus,
    ObservedPayment,
    SpendPurpose,
    TxStatus,
    WatchPurpose,
)
from bitcoin.rpc import BitcoinRPC
from bitcoin.services import (
    collateral_lock_complete,
    spend_register_template,
    watch_outpoint,
    watch_script,
)
from tests.bitcoin.conftest import Chain, TcpRelay, new_loan, relay_url
from tests.bitcoin.test_chain import DEPOSIT, build_tx1

pytestmark = [pytest.mark.bitcoin_node, pytest.mark.celery_worker]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the worker did not get there in time")
        time.sleep(0.2)


@pytest.fixture
def worker_env(
    bitcoin_node: Any, faucet: str, relay: TcpRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's environment: the node through the relay, the scanner after the tip."""
    tip = int(bitcoin_node.rpc("getblockcount"))
    monkeypatch.setenv("BITCOIN_RPC_URL", relay_url(bitcoin_node.url, relay.port))
    monkeypatch.setenv("BITCOIN_START_HEIGHT", str(tip + 1))
    monkeypatch.setenv("BITCOIN_CONFIRMATIONS", "2")


def test_scan_and_broadcast_run_in_a_worker_and_survive_node_downtime(
    worker_env: None,
    celery_worker_process: Any,
    relay: TcpRelay,
    bitcoin_node: Any,
    faucet: str,
    settings: Any,
    lender_key: str,
) -> None:
    settings.BITCOIN_RPC_URL = bitcoin_node.url
    client = BitcoinRPC(bitcoin_node.url, timeout=60)
    rpc_module.set_client(client)
    try:
        chain = Chain(bitcoin_node, client, faucet)
        loan = new_loan(lender_key)
        watch_script(
            script_pubkey=loan.escrow.script_pubkey.hex(), loan_ref=loan.ref, target_confirmations=2
        )
        txid, vout = chain.fund(loan.escrow_address, DEPOSIT)
        watch_outpoint(txid=txid, vout=vout, loan_ref=loan.ref, purpose=WatchPurpose.ESCROW)
        chain.mine(2)
        tasks.scan.delay()
        wait_for(
            lambda: ObservedPayment.objects.filter(
                txid=txid, status=ObservationStatus.CONFIRMED, reported_confirmations=2
            ).exists()
        )

        template = build_tx1(loan, (txid, vout))
        spend_register_template(
            loan_ref=loan.ref, purpose=SpendPurpose.COLLATERAL_LOCK, template=template
        )
        tx1 = collateral_lock_complete(
            loan_ref=loan.ref,
            txid=template.txid,
            borrower_signature=vaultero.sign_input(template, loan.borrower_secret),
            borrower_preimage=loan.p_b,
        )

        relay.down()  # the node is unreachable: the task fails, records it, and retries
        pending = tasks.broadcast.delay(tx1.pk)
        wait_for(lambda: BitcoinTransaction.objects.get(pk=tx1.pk).attempts >= 1)
        assert BitcoinTransaction.objects.get(pk=tx1.pk).last_error
        assert not chain.in_mempool(tx1.txid)
        relay.up()
        assert pending.get(timeout=60) == {"txid": tx1.txid, "outcome": "accepted", "reason": ""}
        assert BitcoinTransaction.objects.get(pk=tx1.pk).attempts >= 2

        chain.mine(1)
        tasks.scan.delay()
        wait_for(lambda: BitcoinTransaction.objects.get(pk=tx1.pk).status == TxStatus.CONFIRMED)
    finally:
        rpc_module.set_client(None)
