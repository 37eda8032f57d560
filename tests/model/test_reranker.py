"""reranker.py: pure formatting/parsing tables, then the client against a real fake vLLM server."""

from __future__ import annotations

import asyncio
import math
import time
import typing
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from es_rerank_proxy import http1
from es_rerank_proxy.config import BreakerConfig, RerankerConfig
from es_rerank_proxy.errors import RerankerBadResponse, RerankerTimeout, RerankerUnavailable
from es_rerank_proxy.model.model_server import ModelServerBadResponse, ModelServerUnavailable, parse_error
from es_rerank_proxy.model.reranker import (
    RerankerClient,
    build_request,
    format_qwen3_document,
    format_qwen3_query,
    parse_scores,
)
from es_rerank_proxy.model.scoring import ScoreDoc, Scorer

from ..fakes.fake_reranker import (
    FakeReranker,
    Garbage,
    closed_url,
    hash_score,
    qwen3_like_score,
    start_fake_reranker,
)
from .chain import wrapped_error
from .test_scoring import until

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
INSTRUCTION = "Given a library catalogue search query, retrieve matching books"
MODEL = "Qwen/Qwen3-Reranker-0.6B"
DOCS = ["the history of rome", "gardening for beginners", "roman empire decline", "quantum fields"]


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fake_server() -> AsyncIterator[FakeReranker]:
    async with start_fake_reranker(MODEL) as fake:
        yield fake


@pytest.fixture
async def fake(fake_server: FakeReranker) -> AsyncIterator[FakeReranker]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_cfg(url: str, **kwargs: object) -> RerankerConfig:
    return RerankerConfig(url=(url,), **kwargs)  # type: ignore[arg-type]


def make_client(session: aiohttp.ClientSession, url: str, **kwargs: object) -> RerankerClient:
    return RerankerClient(session, make_cfg(url, **kwargs), INSTRUCTION)


# --- formatting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "query", "expected"),
    [
        (
            "Find books",
            "roman history",
            "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
            'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
            "<|im_start|>user\n<Instruct>: Find books\n<Query>: roman history\n",
        ),
        ("", "", PREFIX + "<Instruct>: \n<Query>: \n"),
        (
            "Büchersuche",
            "Goethe: Faust\nTeil 1",
            PREFIX + "<Instruct>: Büchersuche\n<Query>: Goethe: Faust\nTeil 1\n",
        ),
    ],
)
def test_format_qwen3_query_wraps_instruction_and_query(instruction: str, query: str, expected: str) -> None:
    assert format_qwen3_query(instruction, query) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "A history of Rome",
            "<Document>: A history of Rome<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        ),
        ("", "<Document>: " + SUFFIX),
        ("line one\nline two ✓", "<Document>: line one\nline two ✓" + SUFFIX),
    ],
)
def test_format_qwen3_document_wraps_text(text: str, expected: str) -> None:
    assert format_qwen3_document(text) == expected


# --- build_request ----------------------------------------------------------------------------------

WRAPPED_Q = PREFIX + f"<Instruct>: {INSTRUCTION}\n<Query>: rome\n"
WRAPPED_DOCS = ["<Document>: a" + SUFFIX, "<Document>: b" + SUFFIX]


@pytest.mark.parametrize(
    ("api", "prompt_format", "path", "payload"),
    [
        (
            "vllm",
            "qwen3",
            "/v1/rerank",
            {
                "model": MODEL,
                "query": WRAPPED_Q,
                "documents": WRAPPED_DOCS,
                "top_n": 2,
                "truncate_prompt_tokens": -1,
            },
        ),
        (
            "vllm",
            "none",
            "/v1/rerank",
            {
                "model": MODEL,
                "query": "rome",
                "documents": ["a", "b"],
                "top_n": 2,
                "truncate_prompt_tokens": -1,
            },
        ),
        (
            "tei",
            "qwen3",
            "/rerank",
            {"query": WRAPPED_Q, "texts": WRAPPED_DOCS, "raw_scores": False, "truncate": True},
        ),
        (
            "tei",
            "none",
            "/rerank",
            {"query": "rome", "texts": ["a", "b"], "raw_scores": False, "truncate": True},
        ),
        (
            "cohere",
            "qwen3",
            "/v1/rerank",
            {"model": MODEL, "query": WRAPPED_Q, "documents": WRAPPED_DOCS, "top_n": 2},
        ),
        (
            "cohere",
            "none",
            "/v1/rerank",
            {"model": MODEL, "query": "rome", "documents": ["a", "b"], "top_n": 2},
        ),
    ],
)
def test_build_request_shapes_each_api(
    api: str, prompt_format: str, path: str, payload: dict[str, object]
) -> None:
    cfg = make_cfg("http://m:8000", api=api, prompt_format=prompt_format)
    assert build_request(cfg, INSTRUCTION, "rome", ("a", "b")) == (path, payload)


def test_build_request_rejects_embeddings_api() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        build_request(make_cfg("http://m:8000", api="embeddings"), INSTRUCTION, "q", ["a"])


def test_build_request_payload_serialises_with_orjson() -> None:
    _, payload = build_request(make_cfg("http://m:8000"), INSTRUCTION, "q", ["ä", "b"])
    assert orjson.loads(orjson.dumps(payload)) == payload


# --- parse_scores -----------------------------------------------------------------------------------


def _vllm_body(pairs: list[tuple[object, object]]) -> bytes:
    return orjson.dumps(
        {
            "id": "rerank-1",
            "model": MODEL,
            "usage": {"total_tokens": 3},
            "results": [{"index": i, "document": {"text": "x"}, "relevance_score": s} for i, s in pairs],
        }
    )


@pytest.mark.parametrize(
    ("api", "body", "n_docs", "expected"),
    [
        ("vllm", _vllm_body([(2, 0.9), (0, 0.5), (1, 0.1)]), 3, [0.5, 0.1, 0.9]),
        ("vllm", _vllm_body([]), 0, []),
        ("vllm", _vllm_body([(0, 1), (1, 0)]), 2, [1.0, 0.0]),  # integer scores are numbers too
        (
            "cohere",
            b'{"results":[{"index":1,"relevance_score":0.7},{"index":0,"relevance_score":0.2}]}',
            2,
            [0.2, 0.7],
        ),
        ("tei", b'[{"index":1,"score":0.8},{"index":0,"score":-0.3}]', 2, [-0.3, 0.8]),
    ],
)
def test_parse_scores_returns_scores_in_document_order(
    api: str, body: bytes, n_docs: int, expected: list[float]
) -> None:
    scores = parse_scores(api, body, n_docs)
    assert scores == expected
    assert all(type(s) is float for s in scores)


@pytest.mark.parametrize(
    ("api", "body", "n_docs", "message"),
    [
        ("vllm", b"not json", 1, "not valid JSON"),
        ("vllm", b"", 1, "not valid JSON"),
        ("vllm", b'{"results": [', 1, "not valid JSON"),
        ("vllm", b'[{"index":0,"relevance_score":0.5}]', 1, "expected a JSON object"),
        ("vllm", b'{"data": []}', 1, "'results' to be a list"),
        ("vllm", b'{"results": {"0": 0.5}}', 1, "'results' to be a list"),
        ("vllm", _vllm_body([(0, 0.5)]), 2, "expected 2 results, got 1"),
        ("vllm", _vllm_body([(0, 0.5), (1, 0.4)]), 1, "expected 1 results, got 2"),
        ("vllm", _vllm_body([(0, 0.5), (2, 0.4)]), 2, "out of range"),
        ("vllm", _vllm_body([(-1, 0.5), (1, 0.4)]), 2, "out of range"),
        ("vllm", _vllm_body([(0, 0.5), (0, 0.4)]), 2, "appears twice"),
        ("vllm", _vllm_body([(0, 0.5), (1.0, 0.4)]), 2, "index is not an integer"),
        ("vllm", _vllm_body([(0, 0.5), (True, 0.4)]), 2, "index is not an integer"),
        ("vllm", _vllm_body([(0, 0.5), ("1", 0.4)]), 2, "index is not an integer"),
        ("vllm", _vllm_body([(0, 0.5), (1, None)]), 2, "not a number"),
        ("vllm", _vllm_body([(0, 0.5), (1, "0.4")]), 2, "not a number"),
        ("vllm", _vllm_body([(0, 0.5), (1, False)]), 2, "not a number"),
        ("vllm", b'{"results":[{"index":0,"relevance_score":NaN}]}', 1, "not valid JSON"),
        ("vllm", b'{"results":[{"index":0,"relevance_score":Infinity}]}', 1, "not valid JSON"),
        ("vllm", b'{"results":[{"index":0,"relevance_score":1e400}]}', 1, "not valid JSON"),
        ("vllm", b'{"results":[{"index":0}]}', 1, "not a number"),
        ("vllm", b'{"results":[0.5]}', 1, "to be an object"),
        ("cohere", b'{"results":[{"index":0,"score":0.5}]}', 1, "relevance_score is not a number"),
        ("tei", b'{"results":[{"index":0,"score":0.5}]}', 1, "expected a JSON list"),
        ("tei", b'[{"index":0,"relevance_score":0.5}]', 1, "score is not a number"),
    ],
)
def test_parse_scores_rejects_bad_bodies(api: str, body: bytes, n_docs: int, message: str) -> None:
    with pytest.raises(RerankerBadResponse, match=message):
        parse_scores(api, body, n_docs)


def test_parse_scores_rejects_unknown_api() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        parse_scores("embeddings", b"[]", 0)


# --- parse_error ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"error":{"message":"The model `x` does not exist.","type":"NotFoundError",'
            b'"param":null,"code":404}}',
            "The model `x` does not exist.",
        ),
        (
            b'{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}',
            "too long",
        ),
        (b'{"error":"Unauthorized"}', "Unauthorized"),
        (b'{"error":"Input validation error","error_type":"Validation"}', "Input validation error"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"", "(empty body)"),
        (b'{"detail":"nope"}', '{"detail":"nope"}'),
        (b"\xff\xfe bad bytes", "\ufffd\ufffd bad bytes"),
    ],
)
def test_parse_error_reads_both_vllm_shapes_and_falls_back_to_body(body: bytes, expected: str) -> None:
    assert parse_error(body) == expected


def test_parse_error_truncates_long_bodies() -> None:
    message = parse_error(b"<html>" + b"x" * 5000)
    assert message.startswith("<html>xxx")
    assert message.endswith("...")
    assert len(message) <= 210


# --- client against the fake server -----------------------------------------------------------------


async def test_score_returns_scores_in_document_order_not_server_order(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url)
    scores = await client.score(fake.url, "rome", DOCS, timeout_s=5)
    assert scores == [hash_score("", format_qwen3_document(d)) for d in DOCS]
    assert scores != sorted(scores, reverse=True)  # the fake answered in a different (sorted) order


async def test_score_sends_exact_qwen3_wrapped_strings(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    await make_client(session, fake.url).score(fake.url, "rome", ["a doc", "b doc"], timeout_s=5)
    assert fake.rerank_calls == 1
    assert fake.requests == [
        {
            "model": MODEL,
            "query": PREFIX + f"<Instruct>: {INSTRUCTION}\n<Query>: rome\n",
            "documents": ["<Document>: a doc" + SUFFIX, "<Document>: b doc" + SUFFIX],
            "top_n": 2,
            "truncate_prompt_tokens": -1,
        }
    ]
    assert fake.seen[-1].headers["Content-Type"] == "application/json"
    assert "Authorization" not in fake.seen[-1].headers


async def test_prompt_format_none_sends_raw_text(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake.url, prompt_format="none")
    scores = await client.score(fake.url, "rome", DOCS, timeout_s=5)
    assert scores == [hash_score("", d) for d in DOCS]
    assert fake.documents_seen() == [DOCS]
    payload = fake.requests[0]
    assert isinstance(payload, dict)
    assert payload["query"] == "rome"


async def test_score_tolerates_url_with_trailing_slash(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url)
    assert len(await client.score(fake.url + "/", "q", ["a"], timeout_s=5)) == 1
    assert fake.rerank_calls == 1


async def test_empty_document_list_makes_no_call(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    assert await make_client(session, fake.url).score(fake.url, "q", [], timeout_s=5) == []
    assert fake.seen == []


async def test_over_long_document_is_truncated_not_rejected(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    long_doc = "word " * (fake.max_model_len + 10)
    scores = await make_client(session, fake.url).score(fake.url, "q", [long_doc, "short"], timeout_s=5)
    assert len(scores) == 2
    # Without truncate_prompt_tokens the same request is a 400, as from vLLM.
    async with session.post(fake.url + "/v1/rerank", json={"query": "q", "documents": [long_doc]}) as resp:
        assert resp.status == 400
        assert "maximum context length" in parse_error(await resp.read())


async def test_api_key_is_sent_as_bearer_token(session: aiohttp.ClientSession) -> None:
    async with start_fake_reranker(MODEL, api_key="s3cret") as fake:
        client = make_client(session, fake.url, api_key="s3cret")
        assert len(await client.score(fake.url, "q", ["a", "b"], timeout_s=5)) == 2
        assert fake.seen[-1].headers["Authorization"] == "Bearer s3cret"
        with pytest.raises(RerankerBadResponse, match="HTTP 401: Unauthorized") as info:
            await make_client(session, fake.url).score(fake.url, "q", ["a"], timeout_s=5)
        assert isinstance(info.value, ModelServerBadResponse)
        assert info.value.status == 401


async def test_cohere_api_works_against_vllm_compatible_endpoint(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url, api="cohere", prompt_format="none")
    assert await client.score(fake.url, "q", DOCS, timeout_s=5) == [hash_score("", d) for d in DOCS]
    assert fake.requests == [{"model": MODEL, "query": "q", "documents": DOCS, "top_n": 4}]


async def test_tei_api_against_tei_server(session: aiohttp.ClientSession) -> None:
    async with start_fake_reranker(MODEL, flavor="tei") as fake:
        client = make_client(session, fake.url, api="tei")
        scores = await client.score(fake.url, "q", DOCS, timeout_s=5)
        assert scores == [hash_score("", format_qwen3_document(d)) for d in DOCS]
        assert fake.calls["/rerank"] == 1
        payload = fake.requests[0]
        assert isinstance(payload, dict)
        assert payload["texts"] == [format_qwen3_document(d) for d in DOCS]
        fake.faults.garbage = "wrong_count"
        with pytest.raises(RerankerBadResponse, match="expected 4 results, got 3"):
            await client.score(fake.url, "q", DOCS, timeout_s=5)


async def test_wrong_model_name_is_bad_response(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake.url, model="some/other-model")
    with pytest.raises(
        RerankerBadResponse, match=r"HTTP 404: The model `some/other-model` does not exist\."
    ) as info:
        await client.score(fake.url, "q", ["a"], timeout_s=5)
    assert isinstance(info.value, ModelServerBadResponse)
    assert info.value.status == 404


@pytest.mark.parametrize("shape", ["new", "old"])
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unavailable_with_status_and_message(
    fake: FakeReranker, session: aiohttp.ClientSession, status: int, shape: str
) -> None:
    fake.faults.status = status
    fake.faults.error_shape = shape  # type: ignore[assignment]
    with pytest.raises(RerankerUnavailable, match=f"HTTP {status}: injected status {status}") as info:
        await make_client(session, fake.url).score(fake.url, "q", ["a", "b"], timeout_s=5)
    assert isinstance(info.value, ModelServerUnavailable)
    assert info.value.status == status


@pytest.mark.parametrize("shape", ["new", "old"])
@pytest.mark.parametrize("status", [400, 413, 422])
async def test_4xx_is_bad_response_with_status_and_message(
    fake: FakeReranker, session: aiohttp.ClientSession, status: int, shape: str
) -> None:
    fake.faults.status = status
    fake.faults.error_shape = shape  # type: ignore[assignment]
    with pytest.raises(RerankerBadResponse, match=f"HTTP {status}: injected status {status}") as info:
        await make_client(session, fake.url).score(fake.url, "q", ["a", "b"], timeout_s=5)
    assert isinstance(info.value, ModelServerBadResponse)
    assert info.value.status == status
    assert info.value.reason == "bad_response"


@pytest.mark.parametrize(
    "garbage",
    typing.get_args(Garbage),
)
async def test_garbage_2xx_body_is_bad_response(
    fake: FakeReranker, session: aiohttp.ClientSession, garbage: str
) -> None:
    fake.faults.garbage = garbage  # type: ignore[assignment]
    with pytest.raises(RerankerBadResponse, match="HTTP 200: ") as info:
        await make_client(session, fake.url).score(fake.url, "q", ["a", "b", "c"], timeout_s=5)
    assert isinstance(info.value, ModelServerBadResponse)
    assert info.value.status == 200
    assert isinstance(wrapped_error(info.value), RerankerBadResponse)


async def test_hang_times_out_quickly(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    fake.faults.hang = True
    started = time.monotonic()
    with pytest.raises(RerankerTimeout, match=r"no answer within 0\.2 s") as info:
        await make_client(session, fake.url).score(fake.url, "q", ["a"], timeout_s=0.2)
    assert time.monotonic() - started < 5, "at the timeout (the fake hangs forever), with slack for load"
    assert isinstance(wrapped_error(info.value), asyncio.TimeoutError)
    assert info.value.reason == "timeout"


@pytest.mark.parametrize("transport", ["http1", "aiohttp"])
async def test_a_scorer_stops_a_hung_call_at_the_clients_own_timeout(
    fake: FakeReranker, session: aiohttp.ClientSession, transport: str
) -> None:
    # The scorer puts no timer of its own around a RerankerClient's call: the client's timeout (the
    # search's budget) is what ends a call to a hung server, long before the cache-fill grace would.
    fake.faults.hang = True
    model_session = http1.Client(limit=4) if transport == "http1" else session
    cfg = make_cfg(fake.url, breaker=BreakerConfig(failures=1))
    scorer = Scorer(RerankerClient(model_session, cfg, INSTRUCTION), cfg, model_key="k", fill_grace_s=60.0)
    try:
        outcome = await scorer.score("q", [ScoreDoc(doc_id="a", text="text of a")], 0.2)
        assert outcome.reason == "timeout"
        await until(lambda: scorer.in_flight == 0, timeout_s=30.0)  # cut off long before the 60 s grace
        assert scorer.breaker_states() == {fake.url: "open"}, "the hung call counted as a failure"
    finally:
        await scorer.aclose()
        if isinstance(model_session, http1.Client):
            model_session.close()


@pytest.mark.parametrize("failing", [False, True])
async def test_identical_concurrent_searches_share_one_call_through_a_reranker_client(
    fake: FakeReranker, failing: bool
) -> None:
    # A RerankerClient's flight runs in the first search's own task; a second search for the same
    # documents joins it rather than calling the model again, and gets the same scores or failure.
    fake.faults.latency_s = 0.3
    if failing:
        fake.faults.status = 400
    model_session = http1.Client(limit=4)
    cfg = make_cfg(fake.url)
    scorer = Scorer(RerankerClient(model_session, cfg, INSTRUCTION), cfg, model_key="k")
    docs = [ScoreDoc(doc_id="a", text="text of a"), ScoreDoc(doc_id="b", text="text of b")]
    try:
        first, second = await asyncio.gather(scorer.score("q", docs, 30.0), scorer.score("q", docs, 30.0))
        assert fake.rerank_calls == 1
        assert first.scores == second.scores
        assert (first.model_calls, second.model_calls) == (1, 0)
        assert first.reason == second.reason == ("bad_response" if failing else None)
    finally:
        await scorer.aclose()
        model_session.close()


async def test_latency_within_timeout_succeeds_and_beyond_times_out(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url)
    fake.faults.latency_s = 0.05
    assert len(await client.score(fake.url, "q", ["a"], timeout_s=5)) == 1
    fake.faults.latency_s = 10.0
    started = time.monotonic()
    with pytest.raises(RerankerTimeout):
        await client.score(fake.url, "q", ["a"], timeout_s=0.1)
    assert time.monotonic() - started < 5, "did not wait for the 10 s answer"


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, math.nan])
async def test_no_time_left_raises_timeout_without_calling(
    fake: FakeReranker, session: aiohttp.ClientSession, timeout_s: float
) -> None:
    with pytest.raises(RerankerTimeout, match="no time left"):
        await make_client(session, fake.url).score(fake.url, "q", ["a"], timeout_s=timeout_s)
    assert fake.seen == []


async def test_connection_dropped_mid_body_is_unavailable(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    fake.faults.drop_mid_body = True
    with pytest.raises(RerankerUnavailable) as info:
        await make_client(session, fake.url).score(fake.url, "q", DOCS, timeout_s=5)
    assert isinstance(info.value, ModelServerUnavailable)
    assert info.value.status is None
    assert isinstance(wrapped_error(info.value), aiohttp.ClientError)


async def test_connection_refused_is_unavailable(session: aiohttp.ClientSession) -> None:
    url = closed_url()
    with pytest.raises(RerankerUnavailable, match="ClientConnectorError") as info:
        await make_client(session, url).score(url, "q", ["a"], timeout_s=5)
    assert isinstance(info.value, ModelServerUnavailable)
    assert info.value.status is None
    assert isinstance(wrapped_error(info.value), aiohttp.ClientError)
    assert info.value.reason == "unavailable"


async def test_error_messages_hide_credentials_in_url(session: aiohttp.ClientSession) -> None:
    url = closed_url().replace("http://", "http://user:pw@")
    with pytest.raises(RerankerUnavailable) as info:
        await make_client(session, url).score(url, "q", ["a"], timeout_s=5)
    assert "pw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


async def test_server_stopped_after_start_is_unavailable(session: aiohttp.ClientSession) -> None:
    async with start_fake_reranker(MODEL) as fake:
        url = fake.url
        client = make_client(session, url)
        assert len(await client.score(url, "q", ["a"], timeout_s=5)) == 1
    with pytest.raises(RerankerUnavailable):
        await client.score(url, "q", ["a"], timeout_s=5)


async def test_fail_ratio_is_seeded_and_failures_are_unavailable(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url)

    async def run() -> list[str]:
        outcomes = []
        for _ in range(40):
            try:
                await client.score(fake.url, "q", ["a", "b"], timeout_s=5)
                outcomes.append("ok")
            except ModelServerUnavailable as exc:
                assert exc.status == 503
                outcomes.append("fail")
        return outcomes

    fake.faults.fail_ratio = 0.3
    first = await run()
    fake.reset()
    fake.faults.fail_ratio = 0.3
    assert await run() == first
    assert 4 <= first.count("fail") <= 24


async def test_concurrent_calls_each_get_their_own_order(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url, prompt_format="none")
    batches = [[f"doc {i} {j}" for j in range(i % 5 + 1)] for i in range(30)]
    results = await asyncio.gather(*(client.score(fake.url, "q", b, timeout_s=5) for b in batches))
    for batch, scores in zip(batches, results, strict=True):
        assert scores == [hash_score("", d) for d in batch]
    assert fake.rerank_calls == 30


def test_client_rejects_embeddings_api() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        RerankerClient(None, make_cfg("http://m:8000", api="embeddings"), INSTRUCTION)  # type: ignore[arg-type]


# --- Qwen3-like scorer: what the start-up self-check relies on --------------------------------------


async def test_qwen3_like_scorer_ranks_relevant_doc_first_only_when_wrapped(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    fake.scorer = qwen3_like_score
    docs = ["a cookbook of italian pasta recipes", "the decline and fall of the roman empire"]
    wrapped = await make_client(session, fake.url).score(fake.url, "roman empire decline", docs, timeout_s=5)
    assert wrapped[1] > 0.9 > 0.1 > wrapped[0]
    raw = await make_client(session, fake.url, prompt_format="none").score(
        fake.url, "roman empire decline", docs, timeout_s=5
    )
    assert raw == [hash_score("", "roman empire decline\x00" + d) for d in docs]


async def test_double_wrapping_with_server_side_template_scores_randomly(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    fake.scorer = qwen3_like_score
    fake.server_applies_template = True
    docs = ["a cookbook of italian pasta recipes", "the decline and fall of the roman empire"]
    raw = await make_client(session, fake.url, prompt_format="none").score(
        fake.url, "roman empire decline", docs, timeout_s=5
    )
    assert raw[1] > 0.9 > 0.1 > raw[0]
    doubled = await make_client(session, fake.url).score(fake.url, "roman empire decline", docs, timeout_s=5)
    assert all(s not in raw for s in doubled)
    assert fake.documents_seen()[1] == [format_qwen3_document(d) for d in docs]


# --- health and models ------------------------------------------------------------------------------


async def test_health_true_when_200(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    assert await make_client(session, fake.url).health(fake.url, timeout_s=2) is True
    assert fake.calls["/health"] == 1


async def test_health_false_on_error_status_refused_or_hang(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.url)
    fake.faults.health_status = 503
    assert await client.health(fake.url, timeout_s=2) is False
    url = closed_url()
    assert await client.health(url, timeout_s=2) is False


async def test_models_lists_served_model_ids(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    assert await make_client(session, fake.url).models(fake.url, timeout_s=2) == [MODEL]


async def test_models_maps_failures(fake: FakeReranker, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake.url)
    fake.faults.status = 500
    with pytest.raises(RerankerUnavailable, match="HTTP 500"):
        await client.models(fake.url, timeout_s=2)
    fake.faults.status = None
    fake.faults.garbage = "invalid_json"
    with pytest.raises(RerankerBadResponse, match="not valid JSON"):
        await client.models(fake.url, timeout_s=2)
    fake.faults.garbage = None
    fake.faults.hang = True
    with pytest.raises(RerankerTimeout):
        await client.models(fake.url, timeout_s=0.2)


# --- the fake itself follows vLLM's contract --------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
async def test_fake_rerank_answers_vllm_shape_sorted_and_top_n(
    fake: FakeReranker, session: aiohttp.ClientSession, path: str
) -> None:
    payload = {"model": MODEL, "query": "q", "documents": DOCS, "top_n": 2, "extra": "ignored"}
    async with session.post(fake.url + path, json=payload) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {"id", "model", "usage", "results"}
    assert body["id"].startswith("rerank-")
    assert body["model"] == MODEL
    expected = sorted(range(len(DOCS)), key=lambda i: -hash_score("", DOCS[i]))[:2]
    assert [r["index"] for r in body["results"]] == expected
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in expected]
    assert fake.calls[path] == 1


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"documents": ["a"]}, 400, "query"),
        ({"query": "q", "documents": "a"}, 400, "documents"),
        ({"query": "q", "documents": ["a", 1]}, 400, "documents"),
        ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "does not exist"),
    ],
)
async def test_fake_rejects_invalid_requests_in_new_error_shape(
    fake: FakeReranker, session: aiohttp.ClientSession, payload: dict[str, object], status: int, message: str
) -> None:
    async with session.post(fake.url + "/v1/rerank", json=payload) as resp:
        assert resp.status == status
        body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == status
    assert body["error"]["param"] is None
    assert message in body["error"]["message"]


async def test_fake_score_endpoint_answers_in_input_order(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        fake.url + "/score", json={"model": MODEL, "text_1": "q", "text_2": DOCS}
    ) as resp:
        body = await resp.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert [d["score"] for d in body["data"]] == [hash_score("", d) for d in DOCS]


async def test_fake_health_is_empty_200_and_models_is_openai_list(
    fake: FakeReranker, session: aiohttp.ClientSession
) -> None:
    async with session.get(fake.url + "/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with session.get(fake.url + "/v1/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    card = body["data"][0]
    assert (card["id"], card["object"], card["owned_by"], card["root"]) == (MODEL, "model", "vllm", MODEL)
    assert card["max_model_len"] == 8192


async def test_fake_shuts_down_cleanly_with_a_hanging_request(session: aiohttp.ClientSession) -> None:
    async with start_fake_reranker(MODEL) as fake:
        fake.faults.hang = True
        pending = asyncio.ensure_future(
            session.post(fake.url + "/v1/rerank", json={"query": "q", "documents": []})
        )
        # Shut down once the request hangs inside the fake (a fixed sleep lost this race under load).
        deadline = time.monotonic() + 10
        while not fake.requests and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        started = time.monotonic()
    assert time.monotonic() - started < 10, "the hanging request does not hold the shutdown"
    resp = await pending  # released with a 503 (or the connection closed)
    assert resp.status == 503
    resp.release()
