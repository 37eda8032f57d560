"""Metric labels a client can influence stay few: each label value is a series kept for good."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry

from es_rerank_proxy.observe.metrics import Metrics, reason_label
from es_rerank_proxy.observe.record import SearchRecord


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        (None, ""),
        ("", ""),
        ("sort", "sort"),
        ("sort,sort,-", "sort"),  # an _msearch whose bypassed searches share a reason
        ("-,-", ""),  # every search reranked
        ("sort,size", "mixed"),
        ("sort,-,size,aggregations", "mixed"),
    ],
)
def test_reason_label(reason: str | None, label: str) -> None:
    assert reason_label(reason) == label


def _series(registry: CollectorRegistry, name: str) -> int:
    return sum(
        1
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def test_msearch_reason_combinations_do_not_grow_the_series() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    reasons = ["sort", "size", "aggregations", "-", "collapse", "rescore"]
    for combination in itertools.product(reasons, repeat=3):  # 216 distinct _msearch reason lists
        record = SearchRecord(kind="msearch", indices=("library",))
        record.mode, record.outcome, record.reason = "rerank", "skipped", ",".join(combination)
        metrics.observe_search(record, ("*",))
    # One series per single reason, one for "every search reranked", one for "mixed".
    assert _series(registry, "es_rerank_proxy_searches") == len(reasons) + 1


def test_invented_http_methods_count_as_other() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for n in range(100):
        metrics.count_passthrough(f"METHOD{n}")
    metrics.count_passthrough("GET")
    values = {
        sample.labels["method"]: sample.value
        for family in registry.collect()
        if family.name == "es_rerank_proxy_passthrough_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert values == {"other": 100.0, "GET": 1.0}
