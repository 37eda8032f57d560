"""The shipped SciFact collection, subsets of it, and loading documents into a real Elasticsearch stand-in."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import aiohttp
import pytest

from es_rerank_proxy.tools.datasets import (
    Collection,
    DatasetError,
    IndexingError,
    index_collection,
    judged_queries,
    load_collection,
    parse_qrels,
    parse_queries,
    read_lines,
    subset,
    synthetic_fields,
)


@pytest.fixture(scope="module")
def scifact() -> Collection:
    return load_collection("scifact")


def test_shipped_scifact_has_the_documented_counts(scifact: Collection) -> None:
    assert len(scifact.corpus) == 5183
    assert len(scifact.queries) == 300
    assert sum(len(judged) for judged in scifact.qrels.values()) == 339
    assert set(scifact.qrels) == set(scifact.queries)
    doc_ids = {doc["_id"] for doc in scifact.corpus}
    assert len(doc_ids) == 5183
    assert all(doc_id in doc_ids for judged in scifact.qrels.values() for doc_id in judged)
    assert {grade for judged in scifact.qrels.values() for grade in judged.values()} == {1}
    assert all(doc["title"] and doc["text"] for doc in scifact.corpus)


def test_shipped_scifact_keeps_file_order(scifact: Collection) -> None:
    assert scifact.corpus[0]["_id"] == "4983"
    assert next(iter(scifact.queries.items())) == (
        "1",
        "0-dimensional biomaterials show inductive properties.",
    )
    assert scifact.qrels["1"] == {"31715818": 1}


def test_unknown_dataset_is_rejected() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'nfcorpus'"):
        load_collection("nfcorpus")


def test_subset_takes_first_queries_judged_docs_and_capped_candidates(scifact: Collection) -> None:
    first = list(scifact.queries)[:3]
    judged = {doc_id for qid in first for doc_id in scifact.qrels[qid]}
    corpus_ids = [doc["_id"] for doc in scifact.corpus]
    bm25 = {
        first[0]: [corpus_ids[10], corpus_ids[11], corpus_ids[12]],
        first[1]: [corpus_ids[20], "not-in-corpus"],
        "other": [corpus_ids[30]],  # not a chosen query: ignored
    }
    small = subset(scifact, 3, 2, bm25)
    assert list(small.queries) == first
    assert small.qrels == {qid: scifact.qrels[qid] for qid in first}
    expected = judged | {
        corpus_ids[10],
        corpus_ids[11],
        corpus_ids[20],
    }  # corpus_ids[12] is past the cap of 2
    assert {doc["_id"] for doc in small.corpus} == expected
    assert [doc["_id"] for doc in small.corpus] == [d for d in corpus_ids if d in expected]  # corpus order
    assert subset(scifact, 3, 2, bm25) == small


def test_subset_without_candidates_keeps_only_judged_docs(scifact: Collection) -> None:
    small = subset(scifact, 5, 100, None)
    assert len(small.queries) == 5
    assert {doc["_id"] for doc in small.corpus} == {d for judged in small.qrels.values() for d in judged}


def test_parse_qrels_reads_beir_and_trec_layouts() -> None:
    beir = ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td2\t0", "", "q2\td3\t1"]
    trec = ["q1 0 d1 2", "q1 0 d2 0", "q2 0 d3 1"]
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    assert parse_qrels(beir) == parse_qrels(trec) == expected


@pytest.mark.parametrize("line", ["q1\td1", "q1\td1\thigh", "a b c d e"])
def test_parse_qrels_names_the_bad_line(line: str) -> None:
    with pytest.raises(DatasetError, match=r"my\.tsv:2: expected"):
        parse_qrels(["q0\td0\t1", line], "my.tsv")


def test_parse_queries_names_the_bad_line() -> None:
    assert parse_queries(['{"_id": 7, "text": "seven"}', ""]) == {"7": "seven"}
    with pytest.raises(DatasetError, match=r"q\.jsonl:1: expected"):
        parse_queries(['{"id": "1", "text": "x"}'], "q.jsonl")


def test_read_lines_gunzips_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("x\ny\n", encoding="utf-8")
    (tmp_path / "a.tsv.gz").write_bytes(gzip.compress(b"x\ny\n"))
    assert read_lines(tmp_path / "a.tsv") == read_lines(tmp_path / "a.tsv.gz") == ["x", "y"]


def test_synthetic_fields_are_stable_and_in_range(scifact: Collection) -> None:
    assert synthetic_fields("4983") == ("1991-03-15", 296)  # pinned: sha256 is the same everywhere
    values = [synthetic_fields(doc["_id"]) for doc in scifact.corpus[:500]]
    assert all("1990-01-01" <= published <= "2024-12-31" for published, _ in values)
    assert all(0 <= citations < 1000 for _, citations in values)
    assert len({published for published, _ in values}) > 400  # spread out, not a constant


async def test_index_collection_loads_documents_that_search_finds(es_url: str, scifact: Collection) -> None:
    index = f"test-datasets-{uuid.uuid4().hex[:8]}"
    docs = scifact.corpus[:25]
    calls: list[tuple[int, int]] = []
    async with aiohttp.ClientSession() as session:
        await index_collection(
            es_url, index, docs, session=session, batch=10, progress=lambda d, t: calls.append((d, t))
        )
        assert calls == [(10, 25), (20, 25), (25, 25)]
        async with session.get(f"{es_url}/{index}/_mapping") as response:
            properties = (await response.json())[index]["mappings"]["properties"]
        assert properties["published"]["type"] == "date"
        assert properties["citations"]["type"] == "integer"
        target = docs[7]
        query = {"query": {"multi_match": {"query": target["title"], "fields": ["title", "text"]}}}
        async with session.post(f"{es_url}/{index}/_search", json=query) as response:
            hits = (await response.json())["hits"]["hits"]
        assert hits[0]["_id"] == target["_id"]
        published, citations = synthetic_fields(target["_id"])
        assert hits[0]["_source"] == {
            "title": target["title"],
            "text": target["text"],
            "published": published,
            "citations": citations,
        }
        async with session.get(f"{es_url}/{index}/_count") as response:
            assert (await response.json())["count"] == 25


async def test_index_collection_refuses_an_existing_index_unless_recreate(
    es_url: str, scifact: Collection
) -> None:
    index = f"test-datasets-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        await index_collection(es_url, index, scifact.corpus[:3], session=session)
        with pytest.raises(IndexingError, match=f"PUT {index}: HTTP 400"):
            await index_collection(es_url, index, scifact.corpus[:3], session=session)
        await index_collection(es_url, index, scifact.corpus[3:5], session=session, recreate=True)
        async with session.get(f"{es_url}/{index}/_count") as response:
            assert (await response.json())["count"] == 2


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, ["q3", "q1", "q4"]), (2, ["q3", "q1"]), (0, [])],
)
def test_judged_queries_keep_the_queries_order_and_skip_unjudged_ones(
    limit: int | None, expected: list[str]
) -> None:
    queries = {"q3": "c", "q2": "b", "q1": "a", "q4": "d"}
    qrels = {"q1": {"d1": 1}, "q4": {"d2": 1}, "q3": {"d3": 2}, "q9": {"d4": 1}}
    assert judged_queries(queries, qrels, limit) == {qid: queries[qid] for qid in expected}
