"""A real fake vLLM rerank server: an aiohttp app on a free 127.0.0.1 port, with fault switches.

    async with start_fake_reranker() as fake:
        fake.faults.status = 503          # or latency_s, hang, drop_mid_body, garbage, fail_ratio ...
        ... call fake.url ...
        assert fake.requests[-1]["documents"] == [...]

It follows vLLM's contract (see /work/shared/reference/vllm-rerank.md): `POST /v1/rerank` (and `/rerank`,
`/v2/rerank`), `POST /score`, `GET /health`, `GET /v1/models`, both error shapes. With `flavor="tei"`,
`POST /rerank` speaks Hugging Face TEI instead (`texts` in, a bare `[{index, score}]` list out).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import random
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import web

from es_rerank_proxy.model.reranker import QWEN3_PREFIX, QWEN3_SUFFIX

Scorer = Callable[[str, str], float]
Garbage = Literal[
    "invalid_json",
    "wrong_count",
    "index_out_of_range",
    "nan",
    "inf",
    "duplicate_index",
    "null_score",
    "string_score",
    "bool_score",
    "not_object",
    "missing_results",
    "empty_body",
]

RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
# What vLLM's qwen3_reranker.jinja uses when the request names no instruction.
DEFAULT_QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


# --- scorers ----------------------------------------------------------------------------------------


def hash_score(query: str, document: str) -> float:
    """Stable pseudo-random score in (0, 1) from the document text alone (the query is ignored)."""
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def _words(text: str) -> set[str]:
    # CJK characters count one by one (as a Chinese analyzer's unigrams); other scripts by word.
    return set(re.findall(r"[\u3400-\u9fff]|[^\W\u3400-\u9fff]+", text.lower()))


def _unwrap_query(query: str) -> str | None:
    """The user's query inside exactly one Qwen3 query template, else None."""
    if query.count("<Query>: ") != 1 or query.count(QWEN3_PREFIX) != 1 or not query.startswith(QWEN3_PREFIX):
        return None
    return query.split("<Query>: ", 1)[1].removesuffix("\n")


def _unwrap_document(document: str) -> str | None:
    """The document inside exactly one Qwen3 document template, else None."""
    if not (document.startswith("<Document>: ") and document.endswith(QWEN3_SUFFIX)):
        return None
    inner = document[len("<Document>: ") : -len(QWEN3_SUFFIX)]
    return None if "<Document>: " in inner or QWEN3_SUFFIX in inner else inner


def overlap_score(query: str, document: str) -> float:
    """Word-overlap relevance in (0, 1): the share of query words found in the document."""
    q, d = _words(query), _words(document)
    share = len(q & d) / len(q) if q else 0.0
    # A tiny hash term breaks ties deterministically without changing which of two docs is more relevant.
    return 0.02 + 0.95 * share + 0.01 * hash_score("", document)


def qwen3_like_score(query: str, document: str) -> float:
    """Like Qwen3-Reranker: relevant only when both sides are wrapped exactly once, else near random."""
    inner_query, inner_doc = _unwrap_query(query), _unwrap_document(document)
    if inner_query is None or inner_doc is None:
        return hash_score("", query + "\x00" + document)
    return overlap_score(inner_query, inner_doc)


# --- switches and records ---------------------------------------------------------------------------


@dataclass(slots=True)
class Faults:
    """Per-test switches; every field's default is "behave like a healthy vLLM"."""

    latency_s: float = 0.0  # sleep before answering (scoring endpoints and /v1/models)
    status: int | None = None  # answer this status with an error body
    error_shape: Literal["new", "old"] = "new"  # vLLM >= 0.10.1 or older; applies to every error
    garbage: Garbage | None = None  # a 200 whose body is wrong in this way (rerank and /score)
    hang: bool = False  # accept the request, never answer (released at shutdown)
    drop_mid_body: bool = False  # send headers and half the body, then close the connection
    fail_ratio: float = 0.0  # share of requests answered with `fail_status` (seeded RNG)
    fail_status: int = 503
    health_status: int = 200  # GET /health


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    payload: object  # parsed JSON, or None if the body was not JSON


@dataclass(slots=True)
class FakeReranker:
    """Handle returned by `start_fake_reranker`; tests read and set its attributes."""

    model: str
    url: str = ""
    flavor: Literal["vllm", "tei"] = "vllm"
    api_key: str = ""
    max_model_len: int = 8192
    seed: int = 0
    # The server applies the Qwen3 template itself (vLLM with --chat-template): clients must not wrap.
    server_applies_template: bool = False
    scorer: Scorer = hash_score
    faults: Faults = field(default_factory=Faults)
    requests: list[object] = field(default_factory=list)  # parsed payloads of every POST
    seen: list[SeenRequest] = field(default_factory=list)  # every request, any method
    calls: collections.Counter[str] = field(default_factory=collections.Counter)  # by path
    rng: random.Random = field(default_factory=random.Random)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    @property
    def rerank_calls(self) -> int:
        """How many `POST /v1/rerank` requests arrived."""
        return self.calls["/v1/rerank"]

    def reset(self, *, scorer: Scorer = hash_score) -> None:
        """Healthy again: default faults and scorer, records cleared, RNG reseeded."""
        self.faults = Faults()
        self.scorer = scorer
        self.server_applies_template = False
        self.requests.clear()
        self.seen.clear()
        self.calls.clear()
        self.rng.seed(self.seed)

    def documents_seen(self) -> list[list[str]]:
        """The `documents` (or TEI `texts`) list of every rerank request, in arrival order."""
        out: list[list[str]] = []
        for payload in self.requests:
            if isinstance(payload, dict):
                docs = payload.get("documents", payload.get("texts"))
                if isinstance(docs, list):
                    out.append([str(d) for d in docs])
        return out

    # --- handlers -----------------------------------------------------------------------------------

    def _error(self, status: int, message: str, err_type: str = "BadRequestError") -> web.Response:
        if self.faults.error_shape == "old":
            body: dict[str, object] = {
                "object": "error",
                "message": message,
                "type": err_type,
                "param": None,
                "code": status,
            }
        else:
            body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    async def _record(self, request: web.Request) -> object:
        raw = await request.read()
        try:
            payload: object = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if request.method == "POST":
            self.requests.append(payload)
        self.seen.append(SeenRequest(request.method, request.path, dict(request.headers), payload))
        self.calls[request.path] += 1
        return payload

    async def _faults_before(self, request: web.Request) -> web.Response | None:
        """Apply latency, hang, auth, random and forced failures; a response means "answer this"."""
        faults = self.faults
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
        if faults.hang:
            await self._release.wait()
            return self._error(503, "fake reranker is shutting down", "ServiceUnavailableError")
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if faults.fail_ratio > 0 and self.rng.random() < faults.fail_ratio:
            return self._error(faults.fail_status, "injected failure", "InternalServerError")
        if faults.status is not None:
            err_type = "InternalServerError" if faults.status >= 500 else "BadRequestError"
            return self._error(faults.status, f"injected status {faults.status}", err_type)
        return None

    async def _send(self, request: web.Request, body: bytes, status: int = 200) -> web.StreamResponse:
        if not self.faults.drop_mid_body:
            return web.Response(status=status, body=body, content_type="application/json")
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/json"
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        # The connection is gone; stop here without letting aiohttp finish (or log) the response.
        raise asyncio.CancelledError

    def _score_pairs(self, query: str, documents: list[str]) -> list[float]:
        if self.server_applies_template:
            # What vLLM's server-side template does to whatever the client sent.
            query = f"{QWEN3_PREFIX}<Instruct>: {DEFAULT_QWEN3_INSTRUCTION}\n<Query>: {query}\n"
            documents = [f"<Document>: {d}{QWEN3_SUFFIX}" for d in documents]
        return [float(self.scorer(query, d)) for d in documents]

    def _check_length(self, query: str, documents: list[str], truncate: object) -> str | None:
        if truncate is not None:
            return None
        for doc in documents:
            tokens = len(query.split()) + len(doc.split())
            if tokens > self.max_model_len:
                return (
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                    f"requested {tokens} tokens in the input for rerank. "
                    "Please reduce the length of the input."
                )
        return None

    async def handle_rerank(self, request: web.Request) -> web.StreamResponse:
        payload = await self._record(request)
        early = await self._faults_before(request)
        if early is not None:
            return early
        if self.flavor == "tei" and request.path == "/rerank":
            return await self._tei_rerank(request, payload)
        if not isinstance(payload, dict):
            return self._error(400, "Request body must be a JSON object")
        model = payload.get("model")
        if model is not None and model != self.model:
            # vLLM answers an unknown model with 404 NotFoundError.
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
        query = payload.get("query")
        if not isinstance(query, str):
            return self._error(400, "1 validation error: query: Field required or not a string")
        documents = payload.get("documents")
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            return self._error(400, "1 validation error: documents: Input should be a list of strings")
        top_n = payload.get("top_n", 0)
        if not isinstance(top_n, int) or isinstance(top_n, bool):
            return self._error(400, "1 validation error: top_n: Input should be a valid integer")
        too_long = self._check_length(query, documents, payload.get("truncate_prompt_tokens"))
        if too_long:
            return self._error(400, too_long)
        scores = self._score_pairs(query, documents)
        results: list[dict[str, object]] = [
            {"index": i, "document": {"text": doc}, "relevance_score": scores[i]}
            for i, doc in enumerate(documents)
        ]
        results.sort(key=lambda r: -float(r["relevance_score"]))  # type: ignore[arg-type]
        if top_n > 0:
            results = results[:top_n]
        body: dict[str, object] = {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": self.model,
            "usage": {"total_tokens": sum(len(query.split()) + len(d.split()) for d in documents)},
            "results": results,
        }
        return await self._send(request, self._garble(body, "results", "relevance_score"))

    async def _tei_rerank(self, request: web.Request, payload: object) -> web.StreamResponse:
        if not isinstance(payload, dict):
            return web.json_response({"error": "invalid JSON", "error_type": "Validation"}, status=422)
        query, texts = payload.get("query"), payload.get("texts")
        if (
            not isinstance(query, str)
            or not isinstance(texts, list)
            or not all(isinstance(t, str) for t in texts)
        ):
            return web.json_response(
                {"error": "query and texts required", "error_type": "Validation"}, status=422
            )
        scores = self._score_pairs(query, texts)
        items: list[dict[str, object]] = [{"index": i, "score": s} for i, s in enumerate(scores)]
        items.sort(key=lambda r: -float(r["score"]))  # type: ignore[arg-type]
        return await self._send(request, self._garble({"results": items}, "results", "score", bare=True))

    async def handle_score(self, request: web.Request) -> web.StreamResponse:
        payload = await self._record(request)
        early = await self._faults_before(request)
        if early is not None:
            return early
        if not isinstance(payload, dict):
            return self._error(400, "Request body must be a JSON object")
        text_1, text_2 = payload.get("text_1"), payload.get("text_2")
        if isinstance(text_2, str):
            text_2 = [text_2]
        if (
            not isinstance(text_1, str)
            or not isinstance(text_2, list)
            or not all(isinstance(t, str) for t in text_2)
        ):
            return self._error(400, "text_1 must be a string and text_2 a string or a list of strings")
        scores = self._score_pairs(text_1, text_2)
        body: dict[str, object] = {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": self.model,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
        return await self._send(request, self._garble(body, "data", "score"))

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(status=self.faults.health_status)

    async def handle_models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        early = await self._faults_before(request)
        if early is not None:
            return early
        created = int(time.time())
        card = {
            "id": self.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission"}],
        }
        body = orjson.dumps({"object": "list", "data": [card]})
        if self.faults.garbage == "invalid_json":
            body = body[: len(body) // 2]
        return await self._send(request, body)

    def _garble(self, body: dict[str, object], list_key: str, score_key: str, bare: bool = False) -> bytes:
        """Serialise `body` (or, if `bare`, its list), damaged the way `faults.garbage` says."""
        kind = self.faults.garbage
        items = body[list_key]
        assert isinstance(items, list)
        if kind == "wrong_count":
            if items:
                items.pop()
            else:
                items.append({"index": 0, score_key: 0.5})
        elif kind == "index_out_of_range" and items:
            items[0]["index"] = len(items)
        elif kind == "duplicate_index" and len(items) >= 2:
            items[1]["index"] = items[0]["index"]
        elif kind in ("nan", "inf") and items:
            items[0][score_key] = float("nan") if kind == "nan" else float("inf")
        elif kind == "null_score" and items:
            items[0][score_key] = None
        elif kind == "string_score" and items:
            items[0][score_key] = str(items[0][score_key])
        elif kind == "bool_score" and items:
            items[0][score_key] = True
        elif kind == "missing_results":
            del body[list_key]
        out: object = items if bare and kind != "missing_results" else body
        if kind == "not_object":
            out = items if not bare else body
        if kind == "empty_body":
            return b""
        # For nan/inf, Python's json writes NaN / Infinity literals, as a careless server would.
        text = json.dumps(out).encode() if kind in ("nan", "inf") else orjson.dumps(out)
        if kind == "invalid_json":
            text = text[: max(1, len(text) // 2)]
        return text

    def release_hanging(self) -> None:
        """Let every hanging handler finish (with a 503 nobody reads)."""
        self._release.set()


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening on it (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def closed_url() -> str:
    """`http://127.0.0.1:PORT` with nothing listening."""
    return f"http://127.0.0.1:{closed_port()}"


def build_app(fake: FakeReranker) -> web.Application:
    app = web.Application()
    for path in RERANK_PATHS:
        app.router.add_post(path, fake.handle_rerank)
    app.router.add_post("/score", fake.handle_score)
    app.router.add_post("/v1/score", fake.handle_score)
    app.router.add_get("/health", fake.handle_health)
    app.router.add_get("/v1/models", fake.handle_models)
    return app


@contextlib.asynccontextmanager
async def start_fake_reranker(
    model: str = "Qwen/Qwen3-Reranker-0.6B",
    *,
    scorer: Scorer = hash_score,
    flavor: Literal["vllm", "tei"] = "vllm",
    api_key: str = "",
    max_model_len: int = 8192,
    seed: int = 0,
) -> AsyncIterator[FakeReranker]:
    """Serve a fake vLLM on a free 127.0.0.1 port for the duration of the block."""
    fake = FakeReranker(
        model=model, flavor=flavor, api_key=api_key, max_model_len=max_model_len, seed=seed, scorer=scorer
    )
    # handler_cancellation: a handler whose client went away (a timeout) is cancelled, as in production
    # servers, so a hanging handler does not outlive its test.
    runner = web.AppRunner(build_app(fake), access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        fake.url = f"http://{host}:{port}"
        yield fake
    finally:
        fake.release_hanging()
        await runner.cleanup()
