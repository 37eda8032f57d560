"""Passage vectors out of one proxy and into another: a replica or a restarted proxy loads them instead of
embedding again, and a vector made by another model or for another text is counted and left out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from es_rerank_proxy.model.vector_file import read_header, read_record

from ..fakes.fake_scroll import doc_title, fast_embeddings, scroll_elasticsearch
from ..fakes.proxy_server import RunningProxy, running_proxy
from .test_warm import client_of, proxy_config, warm_lines


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        yield session


async def export(http: aiohttp.ClientSession, proxy: RunningProxy, index: str, encoding: str) -> list[bytes]:
    params = {"index": index, "encoding": encoding}
    async with http.get(f"{proxy.admin_url}/_rerank/vectors", params=params) as response:
        assert response.status == 200, await response.text()
        return [line async for line in response.content]


async def import_(
    http: aiohttp.ClientSession, proxy: RunningProxy, index: str, body: bytes
) -> dict[str, int]:
    async with http.post(
        f"{proxy.admin_url}/_rerank/vectors", params={"index": index}, data=body
    ) as response:
        answer = await response.json()
        assert response.status == 200, answer
        counts: dict[str, int] = answer["counts"]
        return counts


@pytest.mark.parametrize(("encoding", "tolerance"), [("float32", 1e-6), ("float16", 2e-3)])
async def test_exported_vectors_import_into_a_fresh_proxy_without_embedding_again(
    http: aiohttp.ClientSession, encoding: str, tolerance: float
) -> None:
    async with scroll_elasticsearch(120) as es, fast_embeddings() as model:
        config = proxy_config(es, model)
        async with running_proxy(config) as first:
            await warm_lines(http, first, es.index)
            lines = await export(http, first, es.index, encoding)
            original = client_of(first)
            wanted = {f"d{i}": original.cached_vector(original.text_hash(doc_title(i))) for i in range(120)}
        assert orjson.loads(lines[-1]) == {"end": {"vectors": 120, "missing": 0}}
        header = read_header(lines[0])
        assert (header.model, header.dims, header.encoding) == ("fake-e5", 8, encoding)
        embedded_before = model.texts
        async with running_proxy(config) as second:
            counts = await import_(http, second, es.index, b"".join(lines[:-1]))
            client = client_of(second)
            assert counts["imported"] == 120
            assert sum(counts.values()) == 120
            for doc_id, vector in wanted.items():
                loaded = client.cached_vector(client.text_hash(doc_title(int(doc_id[1:]))))
                assert loaded is not None and vector is not None
                assert max(abs(a - b) for a, b in zip(loaded, vector, strict=True)) < tolerance
            # a warm-up after the import finds every vector cached: nothing is embedded again
            final = await warm_lines(http, second, es.index)
            assert final[-1]["embedded"] == 0
        assert model.texts == embedded_before


@pytest.mark.parametrize(
    ("importer_model", "changed_titles", "documents_now", "expected"),
    [
        ("fake-e5", {}, 40, {"imported": 40}),
        ("other-model", {}, 40, {"model_differs": 40}),
        ("fake-e5", {3: "a new title", 7: "another"}, 40, {"imported": 38, "text_differs": 2}),
        ("fake-e5", {}, 30, {"imported": 30, "unknown_document": 10}),
    ],
)
async def test_vectors_of_another_model_or_text_are_counted_and_ignored(
    http: aiohttp.ClientSession,
    importer_model: str,
    changed_titles: dict[int, str],
    documents_now: int,
    expected: dict[str, int],
) -> None:
    async with scroll_elasticsearch(40) as es, fast_embeddings() as model:
        async with running_proxy(proxy_config(es, model)) as first:
            await warm_lines(http, first, es.index)
            lines = await export(http, first, es.index, "float32")
        es.titles.update(changed_titles)
        es.count = documents_now
        async with running_proxy(proxy_config(es, model, model=importer_model)) as second:
            counts = await import_(http, second, es.index, b"".join(lines[:-1]))
            assert {verdict: n for verdict, n in counts.items() if n} == expected
            client = client_of(second)
            assert client.cached_vectors() == expected.get("imported", 0)
            for i in changed_titles:
                assert client.cached_vector(client.text_hash(changed_titles[i])) is None


async def test_bad_lines_are_counted_and_a_bad_header_refused(http: aiohttp.ClientSession) -> None:
    async with (
        scroll_elasticsearch(5) as es,
        fast_embeddings() as model,
        running_proxy(proxy_config(es, model)) as proxy,
    ):
        await warm_lines(http, proxy, es.index)
        lines = await export(http, proxy, es.index, "float32")
        record = read_record(lines[1], read_header(lines[0]))
        wrong_dims = orjson.dumps({"id": record.doc_id, "text_hash": record.text_hash, "vector": [1.0, 2.0]})
        body = b"".join([lines[0], b"not json\n", wrong_dims + b"\n", *lines[2:-1]])
        counts = await import_(http, proxy, es.index, body)
        assert (counts["invalid"], counts["imported"]) == (2, 4)
        async with http.post(
            f"{proxy.admin_url}/_rerank/vectors", params={"index": es.index}, data=b'{"format": "csv"}\n'
        ) as response:
            assert response.status == 400
            assert "format" in (await response.json())["error"]


async def test_exporting_an_unwarmed_index_says_to_warm_it_first(http: aiohttp.ClientSession) -> None:
    async with (
        scroll_elasticsearch(5) as es,
        fast_embeddings() as model,
        running_proxy(proxy_config(es, model)) as proxy,
        http.get(f"{proxy.admin_url}/_rerank/vectors", params={"index": es.index}) as response,
    ):
        assert response.status == 404
        assert "warm it first" in (await response.json())["error"]
