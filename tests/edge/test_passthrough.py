"""Pass-through: an Elasticsearch client cannot tell the proxy from Elasticsearch itself."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
import requests
from elasticsearch import AsyncElasticsearch, Elasticsearch, helpers

from es_rerank_proxy.tools.local_elasticsearch import free_port

from ..fakes.proxy_server import RunningProxy, make_config, proxy_in_thread
from ..fakes.recording_upstream import recording_upstream

WORDS_EN = ["library", "neural", "search", "ranking", "catalogue", "journal", "archive", "history", "physics"]
WORDS_ZH = ["图书馆", "检索", "神经", "排序", "期刊", "档案", "历史", "物理"]


def _documents(index: str, count: int) -> list[dict[str, object]]:
    docs = []
    for i in range(count):
        words = WORDS_ZH if i % 3 == 0 else WORDS_EN
        title = " ".join(words[(i + k) % len(words)] for k in range(3))
        docs.append(
            {
                "_index": index,
                "_id": str(i),
                "title": f"{title} {i}",
                "abstract": " ".join(words[(i * k) % len(words)] for k in range(1, 8)),
                "published": f"{2000 + i % 25}-0{1 + i % 9}-1{i % 10}",
                "citations": i % 97,
            }
        )
    return docs


def _raw(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_official_sync_client_full_lifecycle_matches_direct(
    passthrough_proxy: RunningProxy, es_direct: Elasticsearch
) -> None:
    proxy = Elasticsearch(passthrough_proxy.url, request_timeout=30)
    index = "passthrough-sync"
    proxy.options(ignore_status=404).indices.delete(index=index)
    created = proxy.indices.create(
        index=index,
        mappings={
            "properties": {
                "title": {"type": "text"},
                "published": {"type": "date"},
                "citations": {"type": "integer"},
            }
        },
    )
    assert created["acknowledged"] is True
    ok, errors = helpers.bulk(proxy, _documents(index, 1000), refresh=True)
    assert ok == 1000 and not errors
    assert es_direct.count(index=index)["count"] == 1000

    assert proxy.get(index=index, id="7").body == es_direct.get(index=index, id="7").body
    proxy.update(index=index, id="7", doc={"citations": 5000}, refresh=True)
    assert es_direct.get(index=index, id="7")["_source"]["citations"] == 5000

    query = {"match": {"title": "library"}}
    via_proxy = proxy.search(index=index, query=query, size=5).body
    direct = es_direct.search(index=index, query=query, size=5).body
    via_proxy.pop("took"), direct.pop("took")
    assert via_proxy == direct
    assert proxy.count(index=index, query=query).body == es_direct.count(index=index, query=query).body

    scrolled = [
        hit["_id"]
        for hit in helpers.scan(proxy, index=index, query={"query": {"match_all": {}}, "size": 100})
    ]
    assert sorted(scrolled, key=int) == [str(i) for i in range(1000)]

    assert (
        proxy.cat.indices(index=index, h="index,docs.count").body
        == es_direct.cat.indices(index=index, h="index,docs.count").body
    )
    proxy.indices.delete(index=index)
    assert not es_direct.indices.exists(index=index)
    proxy.close()


async def test_official_async_client_bulk_get_search_through_proxy(
    passthrough_proxy: RunningProxy, es_direct: Elasticsearch
) -> None:
    client = AsyncElasticsearch(passthrough_proxy.url, request_timeout=30, http_compress=True)
    index = "passthrough-async"
    try:
        await client.options(ignore_status=404).indices.delete(index=index)
        await client.indices.create(index=index)
        from elasticsearch.helpers import async_bulk

        ok, _ = await async_bulk(client, _documents(index, 300), refresh=True)
        assert ok == 300
        got = await client.get(index=index, id="3")
        assert got.body == es_direct.get(index=index, id="3").body
        assert got["_source"]["title"].startswith("图书馆") or got["_source"]["title"]
        result = await client.search(index=index, query={"match": {"title": "检索"}}, size=3)
        assert (
            result["hits"]["total"]["value"]
            == es_direct.search(index=index, query={"match": {"title": "检索"}})["hits"]["total"]["value"]
        )
        await client.indices.delete(index=index)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/", None),
        ("GET", "/_cat/health?h=status", None),
        ("GET", "/bytes-idx/_doc/1", None),
        ("GET", "/bytes-idx/_doc/missing", None),
        ("HEAD", "/bytes-idx", None),
        ("HEAD", "/no-such-index", None),
        ("GET", "/bytes-idx/_mapping", None),
        ("POST", "/bytes-idx/_count", b'{"query":{"match":{"title":"library"}}}'),
        ("GET", "/no-such-index/_doc/1", None),
        ("POST", "/bytes-idx/_search/scroll", b'{"scroll_id":"nonsense"}'),
    ],
)
def test_non_search_responses_are_byte_identical(
    passthrough_proxy: RunningProxy,
    es_direct: Elasticsearch,
    es_url: str,
    method: str,
    path: str,
    body: bytes | None,
) -> None:
    if not es_direct.indices.exists(index="bytes-idx"):
        helpers.bulk(es_direct, _documents("bytes-idx", 20), refresh=True)
    headers = {"Content-Type": "application/json"} if body else {}
    direct_status, direct_body = _raw(method, es_url + path, body, headers)
    proxy_status, proxy_body = _raw(method, passthrough_proxy.url + path, body, headers)
    assert proxy_status == direct_status
    assert _sha(proxy_body) == _sha(direct_body)


async def test_headers_and_gzip_body_reach_upstream_unchanged() -> None:
    async with recording_upstream() as upstream:
        with proxy_in_thread(make_config(upstream.url, canary={"default": "off"})) as proxy:
            body = gzip.compress(b'{"index":{}}\n{"title":"x"}\n' * 100)
            headers = {
                "Authorization": "ApiKey c2VjcmV0",
                "Content-Type": "application/vnd.elasticsearch+json; compatible-with=8",
                "Content-Encoding": "gzip",
                "X-Opaque-Id": "trace-42",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
                "X-Rerank-Token": "never forwarded",
            }
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.post(proxy.url + "/idx/_bulk?refresh=wait_for", data=body, headers=headers) as r,
            ):
                assert r.status == 200
                assert r.headers["X-Elastic-Product"] == "Elasticsearch"
    got = upstream.requests[-1]
    assert got.raw_path == "/idx/_bulk?refresh=wait_for"
    assert got.body_sha256 == _sha(body)
    for name in ("Authorization", "Content-Type", "Content-Encoding", "X-Opaque-Id"):
        assert got.headers[name] == headers[name]
    assert "X-Hop" not in got.headers
    assert "X-Rerank-Token" not in got.headers
    assert got.headers["Host"] == upstream.url.removeprefix("http://")


async def test_elasticsearch_down_gives_502_in_es_shape_then_recovers() -> None:
    port = free_port()
    with proxy_in_thread(make_config(f"http://127.0.0.1:{port}", canary={"default": "off"})) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/_cluster/health") as r:
                assert r.status == 502
                error = await r.json()
                assert error["status"] == 502
                assert error["error"]["type"] and error["error"]["reason"]
            async with recording_upstream(port) as upstream:
                async with session.get(proxy.url + "/_cluster/health") as r:
                    assert r.status == 200
                assert upstream.requests[-1].raw_path == "/_cluster/health"


async def test_elasticsearch_hanging_gives_504_within_timeout() -> None:
    async with recording_upstream() as upstream:
        upstream.hang = True
        config = make_config(
            upstream.url, canary={"default": "off"}, elasticsearch={"url": [upstream.url], "timeout_s": 1}
        )
        with proxy_in_thread(config) as proxy:
            async with aiohttp.ClientSession() as session:
                started = time.monotonic()
                async with session.get(proxy.url + "/slow/_doc/1") as r:
                    elapsed = time.monotonic() - started
                    assert r.status == 504
                    assert (await r.json())["error"]["type"] == "proxy_timeout_exception"
                assert elapsed < 1 + 5.0, "at the 1 s timeout (the upstream hangs an hour), slack for load"
                upstream.hang = False
                async with session.get(proxy.url + "/fast/_doc/1") as r:
                    assert r.status == 200


async def _raw_http(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    await writer.wait_closed()
    return data


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("http://{other}/steal", "{proxy}"),
        ("/steal", "{other}"),
        ("//{other}/steal", "{proxy}"),
        ("/..%2f..%2f{other}/steal", "{proxy}"),
        ("/a/../../steal", "{proxy}"),
        ("/%2e%2e/%2e%2e/steal", "{proxy}"),
        ("/@{other}/steal", "{proxy}"),
    ],
)
async def test_request_target_tricks_stay_on_configured_upstream(target: str, host: str) -> None:
    async with recording_upstream() as upstream, recording_upstream() as other:
        with proxy_in_thread(make_config(upstream.url, canary={"default": "off"})) as proxy:
            names = {"other": other.url.removeprefix("http://"), "proxy": proxy.url.removeprefix("http://")}
            request_line = f"GET {target.format(**names)} HTTP/1.1\r\n"
            request = f"{request_line}Host: {host.format(**names)}\r\nConnection: close\r\n\r\n".encode()
            answer = await _raw_http(proxy.url, request)
    assert not other.requests, "a request reached a host other than the configured Elasticsearch"
    status = int(answer.split(b" ", 2)[1])
    assert status == 200 or 400 <= status < 500
    if status == 200:
        assert len(upstream.requests) == 1


@pytest.mark.slow
def test_large_bulk_streams_in_constant_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """200 MB up and 200 MB down through a proxy process whose resident memory stays under 150 MB."""
    import psutil

    from ..fakes.proxy_server import proxy_process

    size = 200 * 1024 * 1024

    async def scenario() -> None:
        async with recording_upstream() as upstream:
            config = make_config(upstream.url, canary={"default": "off"})
            with proxy_process(config, tmp_path) as proxy:
                assert proxy.process is not None
                process = psutil.Process(proxy.process.pid)
                peak = 0

                async def body():  # type: ignore[no-untyped-def]
                    line = b'{"index":{}}\n{"title":"' + b"a" * 1000 + b'"}\n'
                    block = line * 1000
                    sent = 0
                    while sent < size:
                        yield block
                        sent += len(block)

                async def watch() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, process.memory_info().rss)
                        await asyncio.sleep(0.02)

                watcher = asyncio.create_task(watch())
                try:
                    async with aiohttp.ClientSession() as session:
                        async with session.post(
                            proxy.url + "/big/_bulk",
                            data=body(),
                            headers={"Content-Type": "application/x-ndjson"},
                        ) as r:
                            assert r.status == 200
                            assert (await r.json())["received"] >= size
                        upstream.response_bytes = size
                        async with session.get(proxy.url + "/big/_doc/huge") as r:
                            received = 0
                            async for chunk in r.content.iter_chunked(1 << 20):
                                received += len(chunk)
                            assert received == size
                finally:
                    watcher.cancel()
                assert peak < 150 * 1024 * 1024, f"peak RSS {peak / 1048576:.0f} MB"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("method", "path"), [("HEAD", "/bytes-idx"), ("GET", "/bytes-idx/_doc/1"), ("GET", "/")]
)
def test_response_headers_match_elasticsearch(
    passthrough_proxy: RunningProxy, es_direct: Elasticsearch, es_url: str, method: str, path: str
) -> None:
    if not es_direct.indices.exists(index="bytes-idx"):
        helpers.bulk(es_direct, _documents("bytes-idx", 20), refresh=True)
    direct = requests.request(method, es_url + path, timeout=30)
    via_proxy = requests.request(method, passthrough_proxy.url + path, timeout=30)
    for name in ("Content-Length", "Content-Type", "X-Elastic-Product"):
        assert via_proxy.headers.get(name) == direct.headers.get(name), name
