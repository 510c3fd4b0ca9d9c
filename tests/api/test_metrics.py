"""/metrics: Prometheus text for operators, API keys and allow-listed addresses only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from btcloan import metrics
from btcloan.alerts.services import alert_raise

pytestmark = pytest.mark.django_db


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def chain_hook() -> Iterator[None]:
    """What chainwatch does at start-up: a hook setting its gauges from its tables."""

    def hook() -> None:
        metrics.INDEXER_LAG_BLOCKS.labels(chain="evm").set(7)
        metrics.EVENTS_PENDING.labels(chain="evm").set(2)

    metrics.register_scrape_hook("test-chainwatch", hook)
    yield
    metrics._HOOKS.pop("test-chainwatch")


def test_metrics_need_an_operator_an_api_key_or_an_allowed_address(
    settings: Any, borrower_client: APIClient, operator_client: APIClient, metrics_key: str
) -> None:
    anonymous = APIClient()
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics").json()["error"]["code"] == "not_authenticated"
    assert borrower_client.get("/metrics").status_code == 403
    assert operator_client.get("/metrics").status_code == 200
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION=f"Api-Key {metrics_key}").status_code == 200
    assert (
        anonymous.get("/metrics", HTTP_AUTHORIZATION="Api-Key btk_wrong-key-123").status_code == 401
    )

    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert APIClient(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert APIClient(REMOTE_ADDR="192.0.2.1").get("/metrics").status_code in (401, 403)


class LoanMarginCollector:
    """What loans does: a collector computing its figures at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("btcloan_test_open_loans", "Open loans.", labels=["state"])
        family.add_metric(["active"], 3)
        yield family


@pytest.fixture
def loans_collector() -> Iterator[None]:
    collector = LoanMarginCollector()
    metrics.register_collector(collector)
    yield
    metrics.REGISTRY.unregister(collector)


@pytest.mark.usefixtures("loans_collector")
def test_metrics_content(operator_user: Any, chain_hook: None) -> None:
    alert_raise(key="a", severity="critical", title="margin eaten")
    alert_raise(key="b", severity="warning", title="slow node")
    alert_raise(key="c", severity="warning", title="slow node again")

    def broken() -> None:
        raise RuntimeError("db away")

    metrics.register_scrape_hook("test-broken", broken)
    try:
        client = Client()
        client.force_login(operator_user)  # operators' browser session works too
        response = client.get("/metrics", HTTP_ACCEPT="text/plain;version=0.0.4;q=0.3,*/*;q=0.1")
    finally:
        metrics._HOOKS.pop("test-broken")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = _samples(response.content.decode())
    assert samples[("btcloan_alerts_open", (("severity", "critical"),))] == 1
    assert samples[("btcloan_alerts_open", (("severity", "warning"),))] == 2
    assert samples[("btcloan_alerts_open", (("severity", "info"),))] == 0
    assert samples[("btcloan_indexer_lag_blocks", (("chain", "evm"),))] == 7
    assert samples[("btcloan_events_pending", (("chain", "evm"),))] == 2
    assert samples[("btcloan_metrics_hook_failures_total", (("hook", "test-broken"),))] >= 1
    assert samples[("btcloan_test_open_loans", (("state", "active"),))] == 3
    families = {f.name for f in text_string_to_metric_families(response.content.decode())}
    assert {
        "btcloan_indexer_lag_blocks",
        "btcloan_events_pending",
        "btcloan_events_failed",
        "btcloan_workflow_failures",
        "btcloan_broadcasts",
        "btcloan_deadline_margin_blocks",
    } <= families
