"""Warming as a job of the proxy: it finishes on 100,000 documents, is joined, outlives its caller, reports
where it is, and stops with the proxy. Elasticsearch and the model are the fast fakes of `fake_scroll`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from es_rerank_proxy.admin.warm_jobs import WARM_JOBS, WarmJob
from es_rerank_proxy.app import RUNTIME
from es_rerank_proxy.config import Config
from es_rerank_proxy.model.embeddings import EmbeddingsClient

from ..fakes.fake_scroll import FastEmbeddings, ScrollElasticsearch, fast_embeddings, scroll_elasticsearch
from ..fakes.proxy_server import RunningProxy, make_config, running_proxy

EMBEDDINGS = {"api": "embeddings", "model": "fake-e5", "query_prefix": "", "passage_prefix": ""}


def proxy_config(es: ScrollElasticsearch, embeddings: FastEmbeddings, **reranker: object) -> Config:
    return make_config(
        es.url,
        embeddings.url,
        reranker={**EMBEDDINGS, **reranker},
        rerank={"indices": [es.index], "text_fields": ["title"]},
    )


def client_of(proxy: RunningProxy) -> EmbeddingsClient:
    assert proxy.app is not None
    client = proxy.app[RUNTIME].client
    assert isinstance(client, EmbeddingsClient)
    return client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        yield session


async def warm_lines(http: aiohttp.ClientSession, proxy: RunningProxy, index: str) -> list[dict[str, object]]:
    async with http.post(f"{proxy.admin_url}/_rerank/warm", params={"index": index}) as response:
        assert response.status == 200
        return [orjson.loads(line) async for line in response.content]


async def status(http: aiohttp.ClientSession, proxy: RunningProxy) -> dict[str, dict[str, object]]:
    async with http.get(f"{proxy.admin_url}/_rerank/warm") as response:
        indices: dict[str, dict[str, object]] = (await response.json())["indices"]
        return indices


async def until_finished(http: aiohttp.ClientSession, proxy: RunningProxy, index: str) -> dict[str, object]:
    for _ in range(600):
        job = (await status(http, proxy)).get(index)
        if job is not None and job["state"] != "running":
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"the warm-up of {index} did not finish within 30 s")


@pytest.mark.timeout(600)
async def test_warm_finishes_on_an_index_of_100000_documents(http: aiohttp.ClientSession) -> None:
    async with (
        scroll_elasticsearch(100_000) as es,
        fast_embeddings() as model,
        running_proxy(proxy_config(es, model)) as proxy,
    ):
        lines = await warm_lines(http, proxy, es.index)
        assert lines[-1].get("embedded") == 100_000, lines[-1]
        assert lines[-2] == {"done": 100_000, "total": 100_000}
        job = (await status(http, proxy))[es.index]
        assert (job["state"], job["done"], job["total"], job["error"]) == ("done", 100_000, 100_000, None)
        assert client_of(proxy).cached_vectors() == 100_000
        assert model.texts == 100_000, "each document embedded once"
        assert es.cleared == 1, "the scroll is cleared at the end"


async def test_a_second_warm_joins_the_running_job_instead_of_starting_over(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        scroll_elasticsearch(300) as es,
        fast_embeddings() as model,
        running_proxy(proxy_config(es, model)) as proxy,
    ):
        model.gate.clear()
        first = asyncio.ensure_future(warm_lines(http, proxy, es.index))
        await asyncio.wait_for(es.searched.wait(), 30)
        second = asyncio.ensure_future(warm_lines(http, proxy, es.index))
        await asyncio.sleep(0.2)
        model.gate.set()
        one, two = await asyncio.gather(first, second)
        assert one[0]["job"]["joined"] is False  # type: ignore[index]
        assert two[0]["job"]["joined"] is True  # type: ignore[index]
        assert two[0]["job"]["started"] == one[0]["job"]["started"]  # type: ignore[index]
        assert one[-1]["embedded"] == two[-1]["embedded"] == 300
        assert es.searches == 1, "one scroll: the second caller did not start over"
        assert model.texts == 300


async def test_warming_goes_on_when_the_caller_leaves_and_status_says_where_it_is(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        scroll_elasticsearch(250) as es,
        fast_embeddings() as model,
        running_proxy(proxy_config(es, model)) as proxy,
    ):
        model.gate.clear()
        async with http.post(f"{proxy.admin_url}/_rerank/warm", params={"index": es.index}) as response:
            first = orjson.loads(await response.content.readline())
            assert first["job"]["state"] == "running"
        # the caller is gone; the job is not
        running = (await status(http, proxy))[es.index]
        assert running["state"] == "running"
        assert running["total"] in (0, 250)
        model.gate.set()
        job = await until_finished(http, proxy, es.index)
        assert (job["state"], job["done"], job["total"], job["embedded"]) == ("done", 250, 250, 250)
        assert client_of(proxy).cached_vectors() == 250


async def test_a_failed_warm_up_reports_the_error_in_its_status(http: aiohttp.ClientSession) -> None:
    async with (
        scroll_elasticsearch(10) as es,
        fast_embeddings() as model,
        running_proxy(proxy_config(es, model)) as proxy,
    ):
        es.fail_status = 503
        lines = await warm_lines(http, proxy, es.index)
        assert "HTTP 503" in str(lines[-1]["error"])
        job = (await status(http, proxy))[es.index]
        assert job["state"] == "failed"
        assert "HTTP 503" in str(job["error"])
        assert job["finished"] is not None


async def test_stopping_the_proxy_cancels_a_running_warm_up(http: aiohttp.ClientSession) -> None:
    async with scroll_elasticsearch(100) as es, fast_embeddings() as model:
        async with running_proxy(proxy_config(es, model)) as proxy:
            model.gate.clear()
            async with http.post(f"{proxy.admin_url}/_rerank/warm", params={"index": es.index}) as response:
                await response.content.readline()
            assert proxy.app is not None
        # the admin app is cleaned up: its job was cancelled, not left running against closed sessions
        status_after = (await asyncio.wait_for(_jobs_status(proxy), 5))[es.index]
        assert status_after["state"] == "failed"
        assert status_after["error"] == "the proxy is shutting down"


async def _jobs_status(proxy: RunningProxy) -> dict[str, dict[str, object]]:
    assert proxy.admin_app is not None
    return proxy.admin_app[WARM_JOBS].status()


async def test_a_job_wakes_its_watchers_on_progress_and_on_the_heartbeat() -> None:
    job = WarmJob(index="papers", limit=None, started=0.0)
    watcher = asyncio.ensure_future(job.changed(timeout_s=60))
    await asyncio.sleep(0)
    job.progress(5, 10)
    await asyncio.wait_for(watcher, 5)  # woken by the progress, long before its 60 s heartbeat
    await asyncio.wait_for(job.changed(timeout_s=0.01), 5)  # nothing moved: the heartbeat returns anyway
    assert job.status()["done"] == 5
