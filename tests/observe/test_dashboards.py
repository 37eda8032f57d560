"""The operations artefacts (deploy/prometheus/alerts.yml, deploy/grafana/es-rerank-proxy.json) against the
metrics the proxy really exports: a renamed metric must not leave an alert that never fires or an empty panel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from es_rerank_proxy.observe.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "es-rerank-proxy.json"
# Series Prometheus itself writes for every scrape target, not the proxy.
PROMETHEUS_OWN = {"up"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, label names, keywords and strings left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # label values, format strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, e.g. [5m] or [$__rate_interval]
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[a-zA-Z_:][\w:]*", text):
        followed_by_call = re.match(r"\s*\(", text[match.end() :])
        if not followed_by_call and match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def exported_names() -> set[str]:
    """Every series name a real `Metrics` registry can expose, with the suffixes Prometheus sees."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up == 0", {"up"}),
        (
            'sum(rate(a_total{outcome="degraded"}[5m])) / sum(rate(a_total{outcome=~"x|y"}[5m])) > 0.05',
            {"a_total"},
        ),
        ("max by (url) (b_state{state='open'}) == 1", {"b_state"}),
        ("histogram_quantile(0.99, sum by (le) (rate(c_bucket[$__rate_interval])))", {"c_bucket"}),
        ("increase(d_total[10m]) > 0 and on (instance) e_gauge offset 5m", {"d_total", "e_gauge"}),
        ('label_replace(f, "dst", "$1", "src", "(.*)")', {"f"}),
        ("sum without (job) (g:recorded:rate5m)", {"g:recorded:rate5m"}),
        ("vector(1)", set()),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_exported_names_carry_the_suffixes_prometheus_sees() -> None:
    names = exported_names()
    assert {"es_rerank_proxy_searches_total", "es_rerank_proxy_request_seconds_bucket"} <= names
    assert {"es_rerank_proxy_breaker_state", "es_rerank_proxy_model_seconds_count"} <= names
    assert "es_rerank_proxy_searches" not in names, "a counter is exposed with _total only"


def test_every_alert_reads_only_metrics_the_proxy_exports() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    for rule in _alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: {sorted(names - exported)} not exported"


def test_the_alerts_unit_tests_feed_series_the_proxy_exports() -> None:
    tests = yaml.safe_load(ALERTS.with_name("alerts.test.yml").read_text())["tests"]
    fed = {series["series"].split("{")[0] for test in tests for series in test["input_series"]}
    assert fed <= exported_names() | PROMETHEUS_OWN


def test_every_dashboard_panel_reads_only_metrics_the_proxy_exports() -> None:
    exported = exported_names()
    for panel in _panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']}"
            assert names <= exported, f"{panel['title']}: {sorted(names - exported)} not exported"


def test_dashboard_shows_what_an_operator_asks_first() -> None:
    """Outcomes, degraded share, p50/p99 of request, Elasticsearch and model, cache, breakers, shadow."""
    read = {name for panel in _panels() for t in panel["targets"] for name in metric_names(t["expr"])}
    exprs = " ".join(t["expr"] for panel in _panels() for t in panel["targets"])
    assert {
        "es_rerank_proxy_searches_total",
        "es_rerank_proxy_request_seconds_bucket",
        "es_rerank_proxy_elasticsearch_seconds_bucket",
        "es_rerank_proxy_model_seconds_bucket",
        "es_rerank_proxy_cache_hits_total",
        "es_rerank_proxy_cache_misses_total",
        "es_rerank_proxy_breaker_state",
        "es_rerank_proxy_shadow_kendall_tau_sum",
    } <= read
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert 'outcome="degraded"' in exprs


def test_dashboard_panels_use_the_datasource_variable() -> None:
    """Importable into any Grafana: every query goes to the datasource chosen at the top of the page."""
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_readmes_example_alerts_are_in_the_rules_file() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Example rules:\s*```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    shipped = {rule["alert"]: " ".join(rule["expr"].split()) for rule in _alert_rules()}
    for example in yaml.safe_load(block.group(1)):
        assert shipped.get(example["alert"]) == " ".join(example["expr"].split()), example["alert"]


@pytest.mark.parametrize(
    "command",
    [
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(PROMETHEUS_CONFIG)],
        # The alerts fire on the series the proxy writes, and stay quiet below their thresholds.
        ["test", "rules", str(ALERTS.with_name("alerts.test.yml"))],
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool_accepts_the_files(command: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: apt-get install prometheus (scripts/test does on CI)")
    result = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
