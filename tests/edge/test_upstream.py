"""upstream.Elasticsearch: the in-flight count that shadow admission and the gauge rely on."""

from __future__ import annotations

import asyncio

import pytest

from es_rerank_proxy.config import ElasticsearchConfig
from es_rerank_proxy.edge.upstream import Elasticsearch, create_session
from es_rerank_proxy.errors import UpstreamError

from ..fakes.fake_reranker import closed_url
from ..fakes.recording_upstream import recording_upstream


def pool(url: str, timeout_s: float = 5.0) -> Elasticsearch:
    cfg = ElasticsearchConfig(url=(url,), timeout_s=timeout_s)
    return Elasticsearch(create_session(cfg), cfg)


async def test_in_flight_counts_open_requests_and_returns_to_zero() -> None:
    async with recording_upstream() as upstream:
        upstream.delay_s = 0.3
        es = pool(upstream.url)
        try:
            requests = [asyncio.ensure_future(es.fetch("GET", "/i/_doc/1", {}, None)) for _ in range(3)]
            await asyncio.sleep(0.15)
            assert es.in_flight == 3
            assert [status for status, _, _ in await asyncio.gather(*requests)] == [200, 200, 200]
            assert es.in_flight == 0
        finally:
            await es.session.close()


@pytest.mark.parametrize("failure", ["refused", "timed out"])
async def test_in_flight_returns_to_zero_after_a_failure(failure: str) -> None:
    async with recording_upstream() as upstream:
        upstream.hang = True
        es = pool(closed_url() if failure == "refused" else upstream.url, timeout_s=0.2)
        try:
            with pytest.raises(UpstreamError):
                await es.fetch("GET", "/i/_doc/1", {}, None)
            assert es.in_flight == 0
        finally:
            await es.session.close()


async def test_in_flight_returns_to_zero_when_the_caller_gives_up() -> None:
    async with recording_upstream() as upstream:
        upstream.hang = True
        es = pool(upstream.url)
        try:
            request = asyncio.ensure_future(es.fetch("GET", "/i/_doc/1", {}, None))
            await asyncio.sleep(0.1)
            assert es.in_flight == 1
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert es.in_flight == 0
        finally:
            await es.session.close()
