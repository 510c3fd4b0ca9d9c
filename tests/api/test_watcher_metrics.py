"""The watchers' figures on /metrics and their lag probes on /api/v1/health, against real
PostgreSQL rows and real nodes (anvil, the Bitcoin node): lag = the node's head - the cursor."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient
from web3.types import RPCEndpoint

from bitcoin.models import BitcoinFact, BitcoinTransaction, ScanCursor, TxStatus
from btcloan.dev.localnodes import free_port
from chainwatch.models import (
    ChainCursor,
    DeliveryStatus,
    EvmEvent,
    EvmTransaction,
    OutboxStatus,
    ReorgNotice,
)

pytestmark = pytest.mark.django_db

# Any valid regtest address (BIP-173's P2WPKH test vector): coinbases no test spends.
REGTEST_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(client: APIClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def _health(client: APIClient, status: int) -> dict[str, Any]:
    response = client.get("/api/v1/health")
    assert response.status_code == status, response.json()
    return dict(response.json())


def _chain(name: str, chain: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted({"chain": chain, **labels}.items())))


# --- EVM: chainwatch ------------------------------------------------------------------------
@pytest.fixture
def evm(evm_settings: Any, w3: Any) -> Any:
    """anvil with 300 blocks, no Bitcoin node (its probes demoted), small thresholds."""
    w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(300)])
    evm_settings.EVM_CONFIRMATIONS = 5
    evm_settings.HEALTH_INDEXER_LAG_WARN_BLOCKS = 10
    evm_settings.HEALTH_INDEXER_LAG_CRITICAL_BLOCKS = 50
    evm_settings.BITCOIN_RPC_URL = f"http://127.0.0.1:{free_port()}"
    evm_settings.HEALTH_NONCRITICAL_PROBES = ["bitcoin_node"]
    return w3


def _cursor_behind(w3: Any, settings: Any, blocks: int) -> int:
    head = int(w3.eth.block_number)
    ChainCursor.objects.update_or_create(
        chain_id=settings.EVM_CHAIN_ID, defaults={"block_number": head - blocks}
    )
    return head


def _event(chain_id: int, n: int, status: str) -> EvmEvent:
    return EvmEvent.objects.create(
        chain_id=chain_id,
        contract_address="0x" + "11" * 20,
        contract_name="BtcCollateralLoan",
        event_name="LoanRequested",
        block_number=n,
        block_hash="0x" + f"{n:064x}",
        transaction_hash="0x" + f"{n:064x}",
        log_index=0,
        args={},
        delivery_key=f"loan:{n}",
        status=status,
    )


def _outbox(chain_id: int, n: int, status: str) -> EvmTransaction:
    return EvmTransaction.objects.create(
        chain_id=chain_id,
        loan_ref=str(n),
        action="offer",
        contract_name="BtcCollateralLoan",
        to_address="0x" + "11" * 20,
        function="offerLoan",
        args=[],
        status=status,
    )


@pytest.mark.evm
def test_indexer_figures(evm: Any, settings: Any, operator_client: APIClient) -> None:
    chain_id = settings.EVM_CHAIN_ID
    head = _cursor_behind(evm, settings, 17)
    for n, status in enumerate(["pending", "pending", "failed", "processed", "orphaned"]):
        _event(chain_id, n + 1, status)
    _event(chain_id + 1, 99, "pending")  # another chain: not ours
    ReorgNotice.objects.create(
        chain_id=chain_id, delivery_key="loan:1", fork_block_number=1, orphaned_events=1
    )
    ReorgNotice.objects.create(
        chain_id=chain_id,
        delivery_key="loan:2",
        fork_block_number=1,
        orphaned_events=1,
        status=DeliveryStatus.FAILED,
    )
    for n, status in enumerate(["confirmed", "confirmed", "reverted", "sent"]):
        _outbox(chain_id, n, status)

    samples = _scrape(operator_client)
    assert int(evm.eth.block_number) == head  # the scrape mined nothing
    assert samples[_chain("btcloan_indexer_lag_blocks", "evm")] == 17
    assert samples[_chain("btcloan_events_pending", "evm")] == 3  # 2 events + 1 notice
    assert samples[_chain("btcloan_events_failed", "evm")] == 2  # 1 event + 1 notice
    broadcasts = {
        status: samples[_chain("btcloan_broadcasts", "evm", result=status)]
        for status in OutboxStatus.values
    }
    assert broadcasts == {
        "queued": 0,
        "signed": 0,
        "sent": 1,
        "mined": 0,
        "confirmed": 2,
        "reverted": 1,
        "failed": 0,
        "refused": 0,
        "cancelling": 0,
        "cancelled": 0,
    }


@pytest.mark.evm
def test_indexer_lag_unknown_when_the_node_is_down(
    evm: Any, settings: Any, operator_client: APIClient
) -> None:
    _cursor_behind(evm, settings, 3)
    assert _scrape(operator_client)[_chain("btcloan_indexer_lag_blocks", "evm")] == 3
    _event(settings.EVM_CHAIN_ID, 1, "pending")

    settings.EVM_RPC_URL = f"http://127.0.0.1:{free_port()}"
    samples = _scrape(operator_client)
    # No stale figure; the database's figures are still there and the hook did not fail.
    assert _chain("btcloan_indexer_lag_blocks", "evm") not in samples
    assert samples[_chain("btcloan_events_pending", "evm")] == 1
    assert ("btcloan_metrics_hook_failures_total", (("hook", "chainwatch"),)) not in samples


@pytest.mark.evm
def test_indexer_lag_probes(evm: Any, settings: Any, operator_client: APIClient) -> None:
    # Not indexed yet: degraded (the non-critical probe), not down.
    probes = _health(operator_client, 200)["probes"]
    assert probes["indexer_lag"]["status"] == "down"
    assert probes["indexer_lag"]["critical"] is False
    assert probes["indexer_lag"]["detail"] == "the indexer has not run yet"
    assert probes["indexer_far_behind"]["status"] == "ok"

    # Within the confirmations plus the warning threshold: ok.
    head = _cursor_behind(evm, settings, 5 + 10)
    probes = _health(operator_client, 200)["probes"]
    assert probes["indexer_lag"]["status"] == "ok"
    assert probes["indexer_lag"]["data"] == {
        "head": head,
        "indexed": head - 15,
        "lag_blocks": 15,
        "behind_blocks": 10,
        "limit_blocks": 10,
    }
    assert probes["indexer_far_behind"]["status"] == "ok"
    assert probes["indexer_far_behind"]["critical"] is True

    # A little behind: degraded, still 200.
    _cursor_behind(evm, settings, 5 + 11)
    body = _health(operator_client, 200)
    assert body["status"] == "degraded"
    assert body["probes"]["indexer_lag"]["status"] == "down"
    assert body["probes"]["indexer_lag"]["detail"] == (
        "11 blocks behind the confirmed head (limit 10)"
    )
    assert body["probes"]["indexer_far_behind"]["status"] == "ok"

    # Far behind: down, 503.
    _cursor_behind(evm, settings, 5 + 51)
    body = _health(operator_client, 503)
    assert body["status"] == "down"
    assert body["probes"]["indexer_far_behind"]["status"] == "down"
    assert body["probes"]["indexer_far_behind"]["data"]["behind_blocks"] == 51

    # The node away: evm_node reports it; the far-behind probe does not pile on.
    settings.EVM_RPC_URL = f"http://127.0.0.1:{free_port()}"
    settings.HEALTH_NONCRITICAL_PROBES = ["bitcoin_node", "evm_node"]
    body = _health(operator_client, 200)
    assert body["probes"]["evm_node"]["status"] == "down"
    assert body["probes"]["indexer_lag"]["detail"] == "connection refused"
    assert body["probes"]["indexer_far_behind"]["status"] == "ok"


# --- Bitcoin: the scanner -------------------------------------------------------------------
@pytest.fixture
def btc(settings: Any, bitcoin_node: Any) -> Any:
    """The Bitcoin node with at least 20 blocks, small thresholds, the EVM probes demoted."""
    height = int(bitcoin_node.rpc("getblockcount"))
    if height < 20:
        bitcoin_node.rpc("generatetoaddress", 20 - height, REGTEST_ADDRESS)
    settings.BITCOIN_RPC_URL = bitcoin_node.url
    settings.HEALTH_SCANNER_LAG_WARN_BLOCKS = 2
    settings.HEALTH_SCANNER_LAG_CRITICAL_BLOCKS = 6
    settings.EVM_RPC_URL = f"http://127.0.0.1:{free_port()}"
    settings.HEALTH_NONCRITICAL_PROBES = ["evm_node"]
    return bitcoin_node


def _scan_cursor_behind(node: Any, settings: Any, blocks: int) -> int:
    tip = int(node.rpc("getblockcount"))
    ScanCursor.objects.update_or_create(
        network=settings.BITCOIN_NETWORK,
        defaults={"height": tip - blocks, "block_hash": node.rpc("getblockhash", tip - blocks)},
    )
    return tip


@pytest.mark.bitcoin_node
def test_scanner_figures(btc: Any, settings: Any, operator_client: APIClient) -> None:
    _scan_cursor_behind(btc, settings, 4)
    statuses = ["confirmed", "confirmed", "in_mempool", "failed", "replaced", "signed"]
    for n, status in enumerate(statuses):
        BitcoinTransaction.objects.create(
            txid=f"{n:064x}", raw_hex="00", purpose="collateral_lock", status=status
        )
    for n, (delivered, attempts) in enumerate([(True, 0), (False, 0), (False, 2), (False, 1)]):
        fact = BitcoinFact.objects.create(
            kind="payment_seen", loan_ref="1", dedupe_key=f"k{n}", payload={}, attempts=attempts
        )
        if delivered:
            BitcoinFact.objects.filter(pk=fact.pk).update(delivered_at=fact.created_at)

    samples = _scrape(operator_client)
    assert samples[_chain("btcloan_indexer_lag_blocks", "bitcoin")] == 4
    assert samples[_chain("btcloan_events_pending", "bitcoin")] == 3
    assert samples[_chain("btcloan_events_failed", "bitcoin")] == 2
    assert {
        status: samples[_chain("btcloan_broadcasts", "bitcoin", result=status)]
        for status in TxStatus.values
    } == {
        "built": 0,
        "signed": 1,
        "broadcast": 0,
        "in_mempool": 1,
        "confirmed": 2,
        "replaced": 1,
        "failed": 1,
    }

    settings.BITCOIN_RPC_URL = f"http://u:p@127.0.0.1:{free_port()}"
    samples = _scrape(operator_client)
    assert _chain("btcloan_indexer_lag_blocks", "bitcoin") not in samples
    assert samples[_chain("btcloan_broadcasts", "bitcoin", result="confirmed")] == 2


@pytest.mark.bitcoin_node
def test_scanner_lag_probes(btc: Any, settings: Any, operator_client: APIClient) -> None:
    probes = _health(operator_client, 200)["probes"]
    assert probes["scanner_lag"]["status"] == "down"
    assert probes["scanner_lag"]["detail"] == "the scanner has not run yet"
    assert probes["scanner_far_behind"]["status"] == "ok"

    tip = _scan_cursor_behind(btc, settings, 2)
    probes = _health(operator_client, 200)["probes"]
    assert probes["scanner_lag"]["status"] == "ok"
    assert probes["scanner_lag"]["data"] == {
        "tip": tip,
        "scanned": tip - 2,
        "lag_blocks": 2,
        "limit_blocks": 2,
    }

    _scan_cursor_behind(btc, settings, 3)
    body = _health(operator_client, 200)
    assert body["probes"]["scanner_lag"]["status"] == "down"
    assert body["probes"]["scanner_lag"]["critical"] is False
    assert body["probes"]["scanner_lag"]["detail"] == "3 blocks behind the tip (limit 2)"
    assert body["probes"]["scanner_far_behind"]["status"] == "ok"

    _scan_cursor_behind(btc, settings, 7)
    body = _health(operator_client, 503)
    assert body["probes"]["scanner_far_behind"]["status"] == "down"
    assert body["probes"]["scanner_far_behind"]["data"]["lag_blocks"] == 7
