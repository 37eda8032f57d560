"""A search's bookkeeping runs after its answer, in order, and is never lost: flushed when read or closing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
import requests

from es_rerank_proxy.observe import deferred
from es_rerank_proxy.observe.deferred import DeferredObserver
from es_rerank_proxy.observe.record import SearchRecord
from es_rerank_proxy.observe.search_log import SEARCH_LOGGER

from ..conftest import INDEX, QUERY
from ..fakes.proxy_server import RunningProxy, metric_sum, scrape_metrics


def _record(name: str) -> SearchRecord:
    return SearchRecord(kind="search", indices=(name,))


class _Seen:
    """What an observer was handed; `wait(n)` returns once it has seen n records (5 s at most)."""

    def __init__(self) -> None:
        self.indices: list[tuple[str, ...]] = []
        self._changed = asyncio.Event()

    def __call__(self, record: SearchRecord) -> None:
        self.indices.append(record.indices)
        self._changed.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.indices) < count:
                self._changed.clear()
                await self._changed.wait()


async def test_records_are_observed_later_in_the_order_they_came() -> None:
    seen = _Seen()
    observer = DeferredObserver(seen, delay_s=0.001)
    observer(_record("a"))
    observer(_record("b"))
    assert seen.indices == []  # not in the turn that answered the client
    await seen.wait(2)
    assert seen.indices == [("a",), ("b",)]


async def test_flush_observes_what_is_pending_now_and_only_once() -> None:
    seen = _Seen()
    observer = DeferredObserver(seen, delay_s=0.02)
    observer(_record("a"))
    observer.flush()
    assert seen.indices == [("a",)]
    await asyncio.sleep(0.05)  # past the delay: the cancelled timer observes nothing twice
    assert seen.indices == [("a",)]
    observer(_record("b"))  # a new record arms a new timer
    await seen.wait(2)


async def test_a_failing_observer_is_logged_and_the_next_records_still_observed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, ...]] = []

    def observe(record: SearchRecord) -> None:
        if record.indices == ("bad",):
            raise RuntimeError("observer bug")
        seen.append(record.indices)

    observer = DeferredObserver(observe, delay_s=0.001)
    with caplog.at_level(logging.ERROR):
        observer(_record("bad"))
        observer(_record("good"))
        observer.flush()
    assert seen == [("good",)]
    assert "search observer failed" in caplog.text


async def test_close_observes_what_is_pending_and_then_each_record_at_once() -> None:
    seen: list[tuple[str, ...]] = []
    observer = DeferredObserver(lambda record: seen.append(record.indices), delay_s=10.0)
    observer(_record("a"))
    observer.close()
    assert seen == [("a",)]
    observer(_record("b"))  # a shadow search ending during shutdown
    assert seen == [("a",), ("b",)]


def test_a_scrape_right_after_a_search_counts_it_and_shutdown_writes_its_log_line(
    reranking_proxy: Callable[..., AbstractContextManager[RunningProxy]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Far longer than the test: only a flush can make the search visible.
    monkeypatch.setattr(deferred, "OBSERVE_DELAY_S", 600.0)
    caplog.set_level(logging.INFO, logger=SEARCH_LOGGER)
    searches = "es_rerank_proxy_searches_total"
    with reranking_proxy({"rerank": 0.7, "bm25": 0.3}) as proxy:
        before = metric_sum(scrape_metrics(proxy), searches)
        answer = requests.post(f"{proxy.url}/{INDEX}/_search", json={"query": QUERY}, timeout=30)
        assert answer.headers["X-Rerank"] == "applied"
        assert metric_sum(scrape_metrics(proxy), searches) == before + 1
        answer = requests.post(f"{proxy.url}/{INDEX}/_search", json={"query": QUERY}, timeout=30)
        lines = [r for r in caplog.records if r.name == SEARCH_LOGGER]
        assert len(lines) == 1, "the scrape flushed the first search's line; the second waits"
    lines = [r for r in caplog.records if r.name == SEARCH_LOGGER]
    assert len(lines) == 2, "shutdown writes the line of the search still pending"
