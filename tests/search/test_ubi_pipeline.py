"""UBI through the proxy: `ext.ubi` never reaches Elasticsearch, and each search's query record holds
exactly the page its client got, whatever the arm, and whatever the record's Elasticsearch does."""

from __future__ import annotations

import asyncio
import gzip
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
import orjson
import pytest
import requests
from elasticsearch import Elasticsearch

from es_rerank_proxy.tools.local_elasticsearch import free_port

from ..conftest import INDEX, QUERY
from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread
from ..fakes.recording_upstream import RecordingUpstream, recording_upstream
from ..fakes.threaded import in_thread
from ..fakes.ubi_sink import ubi_sink

UBI = {"query_id": "q-1", "client_id": "c-1", "user_query": "neural search", "application": "opac"}
SEARCH = {"query": {"match": {"title": "neural"}}, "size": 5, "ext": {"ubi": UBI}}
STRIPPED = orjson.dumps({"query": {"match": {"title": "neural"}}, "size": 5})
JSON = {"Content-Type": "application/json"}


# --- Elasticsearch never sees ext.ubi ------------------------------------------------------------------


async def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        assert response.status == 200


async def _until_requests(upstream: RecordingUpstream, count: int) -> None:
    for _ in range(1000):  # a shadow's recall runs in the background
        if len(upstream.requests) >= count:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mode", ["off", "rerank", "shadow", "interleave"])
async def test_ext_ubi_never_reaches_elasticsearch_in_any_mode(mode: str) -> None:
    async with recording_upstream() as upstream:
        with proxy_in_thread(
            make_config(upstream.url, canary={"default": mode}, ubi={"record": False})
        ) as proxy:
            await _post(f"{proxy.url}/{INDEX}/_search", orjson.dumps(SEARCH), JSON)
            await _until_requests(upstream, 2 if mode == "shadow" else 1)
    bodies = [request.body for request in upstream.requests]
    assert bodies and all(b"ubi" not in body and b"ext" not in body for body in bodies)
    # What is forwarded as the client's own request is its body minus ext.ubi, with its own length.
    forwarded = [r for r in upstream.requests if r.body == STRIPPED]
    assert forwarded and forwarded[0].headers["Content-Length"] == str(len(STRIPPED))


@pytest.mark.parametrize("mode", ["off", "rerank"])
async def test_ext_ubi_never_reaches_elasticsearch_in_msearch(mode: str) -> None:
    body = b'{"index": "%s"}\n%s\n{}\n{"query": {"match_all": {}}}\n' % (INDEX.encode(), orjson.dumps(SEARCH))
    headers = {"Content-Type": "application/x-ndjson"}
    async with recording_upstream() as upstream:
        with proxy_in_thread(
            make_config(upstream.url, canary={"default": mode}, ubi={"record": False})
        ) as proxy:
            await _post(f"{proxy.url}/_msearch", body, headers)
    assert upstream.requests and all(b"ubi" not in r.body for r in upstream.requests)
    expected = b'{"index": "%s"}\n%s\n{}\n{"query": {"match_all": {}}}\n' % (INDEX.encode(), STRIPPED)
    assert expected in [r.body for r in upstream.requests]


async def test_gzipped_body_is_stripped_and_sent_gzipped() -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    async with recording_upstream() as upstream:
        with proxy_in_thread(
            make_config(upstream.url, canary={"default": "off"}, ubi={"record": False})
        ) as proxy:
            await _post(f"{proxy.url}/{INDEX}/_search", gzip.compress(orjson.dumps(SEARCH)), headers)
    (got,) = upstream.requests
    assert got.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(got.body) == STRIPPED


async def test_search_without_ext_ubi_reaches_elasticsearch_byte_for_byte() -> None:
    body = b'{"query":  {"match": {"title": "neural"}},\n "ext": {"other": {}} }'
    async with recording_upstream() as upstream:
        with proxy_in_thread(make_config(upstream.url, canary={"default": "rerank"})) as proxy:
            await _post(f"{proxy.url}/{INDEX}/_search", body, JSON)
    assert [r.body for r in upstream.requests] == [body]


# --- query records ---------------------------------------------------------------------------------

StartProxy = Callable[..., AbstractContextManager[RunningProxy]]


def _search(
    proxy: RunningProxy, start: int, size: int, ubi: dict[str, Any] | None = None
) -> requests.Response:
    body: dict[str, Any] = {"query": QUERY, "from": start, "size": size}
    if ubi is not None:
        body["ext"] = {"ubi": ubi}
    response = requests.post(f"{proxy.url}/{INDEX}/_search", json=body, timeout=30)
    assert response.status_code == 200
    return response


def _ids(response: requests.Response) -> list[str]:
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


def _records(es: Elasticsearch, *query_ids: str) -> dict[str, dict[str, Any]]:
    es.indices.refresh(index="ubi_queries")
    found = es.search(index="ubi_queries", query={"terms": {"query_id": list(query_ids)}}, size=50)
    return {hit["_source"]["query_id"]: hit["_source"] for hit in found["hits"]["hits"]}


def _ubi(**extra: Any) -> dict[str, Any]:
    return {**UBI, "query_id": str(uuid.uuid4()), **extra}


def test_query_records_hold_the_pages_the_client_got(
    reranking_proxy: StartProxy, es_direct: Elasticsearch
) -> None:
    first, second = _ubi(query_attributes={"ui": "v2"}), _ubi()
    with reranking_proxy({"rerank": 1.0}) as proxy:
        page1, page2 = _search(proxy, 0, 10, first), _search(proxy, 10, 10, second)
    records = _records(es_direct, first["query_id"], second["query_id"])
    assert page1.headers["X-Query-Id"] == first["query_id"]
    record = records[first["query_id"]]
    assert record["query_response_hit_ids"] == _ids(page1)
    assert {key: record[key] for key in ("client_id", "user_query", "application", "object_id_field")} == {
        "client_id": "c-1",
        "user_query": "neural search",
        "application": "opac",
        "object_id_field": "_id",
    }
    assert record["query_attributes"] == {
        "ui": "v2",
        "arm": "rerank",
        "outcome": "applied",
        "reason": "",
        "page_from": 0,
        "page_size": 10,
    }
    assert records[second["query_id"]]["query_response_hit_ids"] == _ids(page2)
    assert records[second["query_id"]]["query_attributes"]["page_from"] == 10


def test_interleaved_record_credits_each_shown_hit_to_a_team(
    reranking_proxy: StartProxy, es_direct: Elasticsearch
) -> None:
    first, second = _ubi(), _ubi()
    with reranking_proxy({"rerank": 1.0}, canary={"default": "interleave"}) as proxy:
        pages = [_search(proxy, 0, 10, first), _search(proxy, 10, 10, second)]
    records = _records(es_direct, first["query_id"], second["query_id"])
    for page, ubi in zip(pages, (first, second), strict=True):
        record = records[ubi["query_id"]]
        assert record["query_response_hit_ids"] == _ids(page)
        assert record["query_attributes"]["arm"] == "interleave"
        assert len(record["query_attributes"]["teams"]) == 10
    teams = records[first["query_id"]]["query_attributes"]["teams"]
    assert set(teams) == {"es", "rerank"}


@pytest.mark.parametrize(("mode", "reason"), [("off", "canary_off"), ("shadow", "shadow")])
def test_forwarded_search_record_holds_elasticsearchs_page(
    reranking_proxy: StartProxy, es_direct: Elasticsearch, mode: str, reason: str
) -> None:
    ubi = _ubi()
    with reranking_proxy({"rerank": 1.0}, canary={"default": mode}) as proxy:
        page = _search(proxy, 5, 7, ubi)
    es_page = es_direct.search(index=INDEX, query=QUERY, from_=5, size=7)
    assert _ids(page) == [hit["_id"] for hit in es_page["hits"]["hits"]]
    record = _records(es_direct, ubi["query_id"])[ubi["query_id"]]
    assert record["query_response_hit_ids"] == _ids(page)
    attributes = record["query_attributes"]
    assert (attributes["arm"], attributes["outcome"], attributes["reason"]) == (mode, "skipped", reason)
    assert (attributes["page_from"], attributes["page_size"]) == (5, 7)


def test_record_all_names_every_search_and_returns_its_id(
    reranking_proxy: StartProxy, es_direct: Elasticsearch
) -> None:
    with reranking_proxy({"rerank": 1.0}, ubi={"record_all": True}) as proxy:
        page = _search(proxy, 0, 3)
    query_id = page.headers["X-Query-Id"]
    record = _records(es_direct, query_id)[query_id]
    assert record["query_response_hit_ids"] == _ids(page)
    assert record["user_query"] == "neural search"  # the words the proxy found, as no client named them


def test_msearch_records_each_search_that_carries_a_query_id(
    reranking_proxy: StartProxy, es_direct: Elasticsearch
) -> None:
    ubi = _ubi()
    lines = [
        {"index": INDEX},
        {"query": QUERY, "size": 4},
        {"index": INDEX},
        {"query": QUERY, "ext": {"ubi": ubi}},
    ]
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    with reranking_proxy({"rerank": 1.0}) as proxy:
        response = requests.post(
            f"{proxy.url}/_msearch", data=body, headers={"Content-Type": "application/x-ndjson"}, timeout=30
        )
    assert response.status_code == 200
    assert response.headers["X-Query-Id"] == f"-,{ubi['query_id']}"
    second = [hit["_id"] for hit in response.json()["responses"][1]["hits"]["hits"]]
    record = _records(es_direct, ubi["query_id"])[ubi["query_id"]]
    assert record["query_response_hit_ids"] == second
    assert record["query_attributes"]["outcome"] == "applied"


# --- faults of the records' Elasticsearch ----------------------------------------------------------


def _dropped(proxy: RunningProxy, reason: str) -> float:
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    label = f'es_rerank_proxy_ubi_records_total{{outcome="dropped",reason="{reason}"}} '
    return next(
        (float(line.removeprefix(label)) for line in text.splitlines() if line.startswith(label)), 0.0
    )


@pytest.mark.parametrize(
    ("fault", "reason"), [("down", "unavailable"), ("slow", "timeout"), ("429", "rejected")]
)
def test_recording_faults_never_change_an_answer_and_count_drops(
    reranking_proxy: StartProxy, fault: str, reason: str
) -> None:
    with in_thread(ubi_sink, name="ubi-sink") as sink:
        sink.delay_s = 30.0 if fault == "slow" else 0.0
        sink.status = 429 if fault == "429" else 200
        url = f"http://127.0.0.1:{free_port()}" if fault == "down" else sink.url
        ubi_cfg = {"flush_s": 0.02, "elasticsearch": {"url": [url], "timeout_s": 0.2}}
        with reranking_proxy({"rerank": 1.0}, ubi=ubi_cfg) as proxy:
            expected = _ids(_search(proxy, 0, 10))
            for _ in range(3):
                started = time.monotonic()
                response = _search(proxy, 0, 10, _ubi())
                assert time.monotonic() - started < 10, "a slow record store never holds up an answer"
                assert response.headers["X-Rerank"] == "applied"
                assert _ids(response) == expected
            for _ in range(1000):
                if _dropped(proxy, reason) >= 3:
                    break
                time.sleep(0.01)
            assert _dropped(proxy, reason) == 3
        assert sink.documents == []
