"""The UBI recorder: bulk writes with the proxy's own key, bounded, every lost record counted."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from es_rerank_proxy.config import UbiConfig, UbiElasticsearchConfig
from es_rerank_proxy.observe.ubi_recorder import UbiRecorder
from es_rerank_proxy.tools.local_elasticsearch import free_port

from ..fakes.ubi_sink import UbiSink, ubi_sink


@pytest.fixture
async def sink() -> AsyncIterator[UbiSink]:
    async with ubi_sink() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Counts(collections.Counter[tuple[str, str]]):
    def __call__(self, outcome: str, reason: str, count: int) -> None:
        self[(outcome, reason)] += count


def _config(*, timeout_s: float = 5.0, **overrides: Any) -> UbiConfig:
    es = UbiElasticsearchConfig(api_key="k3y", timeout_s=timeout_s)
    return UbiConfig(flush_s=0.02, elasticsearch=es, **overrides)


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for background work; the bound is generous, the poll short."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_records_are_bulk_written_with_the_proxys_key_after_the_templates(
    sink: UbiSink, session: aiohttp.ClientSession
) -> None:
    counts = Counts()
    recorder = UbiRecorder(session, _config(), [sink.url], counts)
    for i in range(3):
        recorder.submit({"query_id": f"q-{i}"})
    await _until(lambda: len(sink.documents) == 3)
    await recorder.aclose()
    assert [doc["query_id"] for doc in sink.documents] == ["q-0", "q-1", "q-2"]
    assert set(sink.templates) == {"ubi_queries", "ubi_events"}
    assert set(sink.authorizations) == {"ApiKey k3y"}
    assert counts == {("written", ""): 3}


async def test_existing_templates_are_left_alone(sink: UbiSink, session: aiohttp.ClientSession) -> None:
    sink.templates.update({"ubi_queries": "theirs", "ubi_events": "theirs"})
    recorder = UbiRecorder(session, _config(), [sink.url], Counts())
    recorder.submit({"query_id": "q"})
    await _until(lambda: len(sink.documents) == 1)
    await recorder.aclose()
    assert sink.templates == {"ubi_queries": "theirs", "ubi_events": "theirs"}


@pytest.mark.parametrize(
    ("status", "item_status", "reason"),
    [(429, 201, "rejected"), (503, 201, "unavailable"), (403, 201, "unauthorized"), (200, 429, "rejected")],
)
async def test_refused_writes_are_dropped_and_counted(
    sink: UbiSink, session: aiohttp.ClientSession, status: int, item_status: int, reason: str
) -> None:
    sink.status, sink.item_status = status, item_status
    counts = Counts()
    recorder = UbiRecorder(session, _config(create_templates=False), [sink.url], counts)
    recorder.submit({"query_id": "a"})
    recorder.submit({"query_id": "b"})
    await _until(lambda: counts[("dropped", reason)] == 2)
    await recorder.aclose()
    assert counts == {("dropped", reason): 2}
    assert sink.documents == []


async def test_slow_elasticsearch_drops_by_timeout(sink: UbiSink, session: aiohttp.ClientSession) -> None:
    sink.delay_s = 30
    counts = Counts()
    recorder = UbiRecorder(session, _config(create_templates=False, timeout_s=0.1), [sink.url], counts)
    recorder.submit({"query_id": "a"})
    await _until(lambda: counts[("dropped", "timeout")] == 1)
    await recorder.aclose()


async def test_missing_elasticsearch_drops_as_unavailable_and_retries_templates(
    session: aiohttp.ClientSession,
) -> None:
    counts = Counts()
    recorder = UbiRecorder(session, _config(), [f"http://127.0.0.1:{free_port()}"], counts)
    recorder.submit({"query_id": "a"})
    await _until(lambda: counts[("dropped", "unavailable")] == 1)
    await recorder.aclose()
    assert recorder.pending == 0


async def test_full_queue_drops_new_records_and_counts_them(session: aiohttp.ClientSession) -> None:
    counts = Counts()
    recorder = UbiRecorder(session, _config(max_pending=2), ["http://127.0.0.1:9"], counts)
    for i in range(5):
        recorder.submit({"query_id": str(i)})
    assert recorder.pending == 2
    assert counts == {("dropped", "queue_full"): 3}
    # Closed, or its writer outlives the test and fails on the closed session in whichever test runs next.
    await recorder.aclose()


async def test_bulk_size_triggers_a_write_before_the_interval(
    sink: UbiSink, session: aiohttp.ClientSession
) -> None:
    config = UbiConfig(flush_s=3600, bulk_size=2, create_templates=False)
    recorder = UbiRecorder(session, config, [sink.url], Counts())
    recorder.submit({"query_id": "a"})
    await asyncio.sleep(0.05)
    assert sink.documents == [], "one record waits for the interval"
    recorder.submit({"query_id": "b"})
    await _until(lambda: len(sink.documents) == 2)
    await recorder.aclose()


async def test_close_writes_what_is_queued(sink: UbiSink, session: aiohttp.ClientSession) -> None:
    recorder = UbiRecorder(session, UbiConfig(flush_s=3600, create_templates=False), [sink.url], Counts())
    recorder.submit({"query_id": "last"})
    await recorder.aclose()
    assert sink.documents == [{"query_id": "last"}]


async def test_close_awaits_a_write_under_way_and_counts_what_it_wrote(
    sink: UbiSink, session: aiohttp.ClientSession
) -> None:
    sink.delay_s = 0.3  # Elasticsearch is still answering the bulk request when the proxy stops
    counts = Counts()
    recorder = UbiRecorder(session, _config(create_templates=False), [sink.url], counts)
    recorder.submit({"query_id": "in flight"})
    await _until(lambda: len(sink.authorizations) == 1)
    await recorder.aclose()
    assert sink.documents == [{"query_id": "in flight"}]
    assert counts == {("written", ""): 1}


async def test_writer_task_ends_once_the_queue_is_empty(
    sink: UbiSink, session: aiohttp.ClientSession
) -> None:
    recorder = UbiRecorder(session, _config(create_templates=False), [sink.url], Counts())
    assert not recorder.writing
    recorder.submit({"query_id": "a"})
    assert recorder.writing
    await _until(lambda: len(sink.documents) == 1)
    await _until(lambda: not recorder.writing)
    recorder.submit({"query_id": "b"})  # and a later record starts a new one
    await _until(lambda: len(sink.documents) == 2)
    await recorder.aclose()
