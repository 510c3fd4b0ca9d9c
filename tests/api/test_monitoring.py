"""deploy/: the Prometheus alerting rules and the Grafana dashboard stand on what /metrics
exports. The rules pass `promtool check rules` and promtool's unit tests
(deploy/prometheus-rules.test.yml: each alert fires on the series that should fire it, and
not before its `for`), and every metric a rule or a panel uses is in a real scrape."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from btcloan.dev.localnodes import free_port

BASE_DIR = Path(__file__).resolve().parents[2]
RULES = BASE_DIR / "deploy" / "prometheus-rules.yml"
RULE_TESTS = BASE_DIR / "deploy" / "prometheus-rules.test.yml"
DASHBOARD = BASE_DIR / "deploy" / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")

# PromQL's own words: functions, aggregations, keywords (what is not a metric name).
PROMQL_WORDS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
        "group_right", "and", "or", "unless", "absent", "delta", "increase", "rate", "irate",
        "offset", "bool", "topk", "bottomk", "histogram_quantile", "clamp_min", "clamp_max",
    }
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: its words minus label matchers, ranges, strings,
    numbers and PromQL's own words."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL_WORDS


def test_metric_names_reads_an_expression() -> None:
    expr = 'sum by (hook) (increase(btcloan_x_total{a="b"}[5m])) > 0 or absent(up_y{c=~"d|e"})'
    assert metric_names(expr) - _grouping_labels(expr) == {"btcloan_x_total", "up_y"}
    assert metric_names("btcloan_a < 12") == {"btcloan_a"}


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _grouping_labels(expr: str) -> set[str]:
    found: set[str] = set()
    for labels in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        found |= {label.strip() for label in labels.split(",") if label.strip()}
    return found


def _exported(operator_client: Any) -> set[str]:
    response = operator_client.get("/metrics")
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.content.decode()):
        names.add(family.name)
        if family.type == "counter":  # declared, even before its first labelled sample
            names.add(f"{family.name}_total")
        names |= {sample.name for sample in family.samples}
    return names


def _used_in_rules() -> dict[str, set[str]]:
    return {
        rule["alert"]: metric_names(rule["expr"]) - _grouping_labels(rule["expr"])
        for rule in _rules()
    }


def _used_in_dashboard() -> dict[str, set[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            used[f"{panel['title']} ({target['refId']})"] = metric_names(expr) - _grouping_labels(
                expr
            )
    return used


def test_every_rule_is_complete_and_names_its_severity() -> None:
    rules = _rules()
    assert len(rules) >= 12
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
    # The runbook's alerts are mirrored: the desk's open alerts by severity, each watcher's lag,
    # the deadline margins, parked events and failing transactions.
    exprs = " ".join(rule["expr"] for rule in rules)
    for needle in (
        'btcloan_alerts_open{severity="critical"}',
        'btcloan_alerts_open{severity="warning"}',
        'btcloan_indexer_lag_blocks{chain="evm"}',
        'btcloan_indexer_lag_blocks{chain="bitcoin"}',
        'btcloan_deadline_margin_blocks{chain="evm"}',
        'btcloan_deadline_margin_blocks{chain="bitcoin"}',
        "btcloan_events_failed",
        "btcloan_broadcasts",
        "btcloan_workflow_failures",
    ):
        assert needle in exprs, needle


@pytest.mark.django_db
def test_every_metric_the_rules_and_the_dashboard_use_is_exported(
    operator_client: Any, settings: Any
) -> None:
    # No node answers: the lag series are then absent, and must still be declared.
    settings.EVM_RPC_URL = f"http://127.0.0.1:{free_port()}"
    settings.BITCOIN_RPC_URL = f"http://u:p@127.0.0.1:{free_port()}"
    exported = _exported(operator_client)
    missing = {
        where: names - exported
        for where, names in {**_used_in_rules(), **_used_in_dashboard()}.items()
        if names - exported
    }
    assert not missing, missing
    # Not vacuous: the rules do read our series.
    assert set().union(*_used_in_rules().values()) >= {
        "btcloan_alerts_open",
        "btcloan_indexer_lag_blocks",
        "btcloan_metrics_hook_failures_total",
    }


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "btcloan-desk"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: `apt-get install prometheus`; .ci/run does)",
)
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
