"""/api/v1/health against the real stores and nodes: 200 when every critical probe answers,
503 when one does not, and never a URL or credential in the body. Operators see every probe;
anonymous callers the status alone, from a recent report (no node call on demand)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from bitcoin.models import ScanCursor
from btcloan import health
from btcloan.apis import ANONYMOUS_HEALTH_KEY
from btcloan.dev.localnodes import free_port, json_rpc
from chainwatch.models import ChainCursor

pytestmark = [pytest.mark.django_db, pytest.mark.evm]

RPC_PASSWORD = "pw-do-not-show-7f3a"


@pytest.fixture
def nodes(evm_settings: Any) -> Any:
    evm_settings.HEALTH_PROBE_TIMEOUT = 2.0
    evm_settings.BITCOIN_RPC_URL = f"http://btcloan:{RPC_PASSWORD}@127.0.0.1:{free_port()}"
    return evm_settings


@pytest.fixture
def extra_probes() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        health.unregister_probe(name)


def _health(client: APIClient, status: int) -> dict[str, Any]:
    response = client.get("/api/v1/health")
    assert response.status_code == status, response.json()
    text = response.content.decode()
    assert RPC_PASSWORD not in text
    assert "http://" not in text
    return dict(response.json())


@pytest.mark.bitcoin_node
def test_everything_up_is_200(operator_client: APIClient, nodes: Any, bitcoin_node: Any) -> None:
    nodes.BITCOIN_RPC_URL = bitcoin_node.url
    # Both watchers caught up (their lag probes are tested in test_watcher_metrics.py).
    evm_head = int(json_rpc(nodes.EVM_RPC_URL, "eth_blockNumber"), 16)
    ChainCursor.objects.create(chain_id=nodes.EVM_CHAIN_ID, block_number=evm_head)
    tip = int(bitcoin_node.rpc("getblockcount"))
    ScanCursor.objects.create(
        network=nodes.BITCOIN_NETWORK, height=tip, block_hash=bitcoin_node.rpc("getblockhash", tip)
    )
    body = _health(operator_client, 200)
    assert body["status"] == "ok"
    assert {name: p["status"] for name, p in body["probes"].items()} == {
        "database": "ok",
        "broker": "ok",
        "evm_node": "ok",
        "bitcoin_node": "ok",
        "indexer_lag": "ok",
        "indexer_far_behind": "ok",
        "scanner_lag": "ok",
        "scanner_far_behind": "ok",
        "loan_contract_flavour": "ok",  # no contract configured here: nothing to contradict
    }
    assert body["probes"]["bitcoin_node"]["data"]["chain"] == "regtest"


def test_stores_and_evm_up_bitcoin_noncritical_is_degraded_200(
    operator_client: APIClient, nodes: Any, w3: Any
) -> None:
    nodes.HEALTH_NONCRITICAL_PROBES = ["bitcoin_node"]
    body = _health(operator_client, 200)
    assert body["status"] == "degraded"
    probes = body["probes"]
    assert probes["database"]["status"] == "ok"
    assert probes["broker"] == {**probes["broker"], "status": "ok", "critical": True}
    assert probes["evm_node"]["status"] == "ok"
    assert probes["evm_node"]["data"] == {"chain_id": w3.eth.chain_id, "block": w3.eth.block_number}
    assert probes["bitcoin_node"]["status"] == "down"
    assert probes["bitcoin_node"]["critical"] is False
    assert probes["bitcoin_node"]["detail"] == "connection refused"


def test_evm_node_down_is_503(operator_client: APIClient, nodes: Any) -> None:
    nodes.EVM_RPC_URL = f"http://u:{RPC_PASSWORD}@127.0.0.1:{free_port()}"
    body = _health(operator_client, 503)
    assert body["status"] == "down"
    assert body["probes"]["evm_node"]["status"] == "down"
    assert body["probes"]["evm_node"]["detail"] == "connection refused"


def test_evm_node_on_the_wrong_chain_is_503(operator_client: APIClient, nodes: Any) -> None:
    nodes.HEALTH_NONCRITICAL_PROBES = ["bitcoin_node"]
    nodes.EVM_CHAIN_ID = 30
    body = _health(operator_client, 503)
    assert "wrong chain" in body["probes"]["evm_node"]["detail"]


def test_apps_register_probes(
    operator_client: APIClient, nodes: Any, extra_probes: list[str]
) -> None:
    nodes.HEALTH_NONCRITICAL_PROBES = ["bitcoin_node"]
    health.register_probe(
        "test_lag", lambda: health.ProbeResult(True, "3 blocks behind", {"lag_blocks": 3})
    )
    extra_probes.append("test_lag")
    body = _health(operator_client, 200)
    assert body["probes"]["test_lag"]["data"] == {"lag_blocks": 3}

    def broken() -> health.ProbeResult:
        raise RuntimeError(f"cannot reach http://x:{RPC_PASSWORD}@host")

    health.register_probe("reports", broken)
    extra_probes.append("reports")
    body = _health(operator_client, 503)
    assert body["probes"]["reports"] == {**body["probes"]["reports"], "status": "down"}
    assert body["probes"]["reports"]["detail"] == "failed: RuntimeError"


def test_anonymous_callers_get_the_status_alone_from_a_recent_report(
    api_client: APIClient, operator_client: APIClient, nodes: Any, extra_probes: list[str]
) -> None:
    nodes.HEALTH_NONCRITICAL_PROBES = ["bitcoin_node"]
    nodes.HEALTH_ANONYMOUS_CACHE_SECONDS = 60
    cache.delete(ANONYMOUS_HEALTH_KEY)
    calls: list[int] = []

    def counted() -> health.ProbeResult:
        calls.append(1)
        return health.ProbeResult(True, "7 blocks behind", {"lag_blocks": 7})

    health.register_probe("counted", counted)
    extra_probes.append("counted")
    for _ in range(5):
        response = api_client.get("/api/v1/health")
        assert response.status_code == 200
        assert response.json() == {"status": "degraded"}  # no probes, no lag figures
    assert len(calls) == 1  # one report served every anonymous call
    detail = _health(operator_client, 200)
    assert detail["probes"]["counted"]["data"] == {"lag_blocks": 7}
    assert len(calls) == 2  # operators get a fresh one


def test_a_staff_user_without_a_role_is_anonymous_here(api_client: APIClient, nodes: Any) -> None:
    from django.contrib.auth import get_user_model

    from btcloan.api.services import access_token_issue

    cache.delete(ANONYMOUS_HEALTH_KEY)
    staff = get_user_model().objects.create_user(username="staff-only", is_staff=True)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_issue(user=staff).token}")
    body = api_client.get("/api/v1/health").json()
    assert set(body) == {"status"}
