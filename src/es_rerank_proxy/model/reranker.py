"""Client for the rerank APIs: request and response formats, Qwen3 prompt formatting.

The pure helpers (`format_qwen3_*`, `build_request`, `parse_scores`) hold every format decision;
`RerankerClient` sends one request through `model_server` and maps a bad answer to the project's
exceptions. Retries, budgets and breakers live in `scoring` / `resilience`, not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypedDict

import orjson

from ..config import RerankerConfig
from ..errors import RerankerBadResponse, RerankerTimeout, RerankerUnavailable
from .model_server import (
    ModelServerBadResponse,
    ModelSession,
    call_model_server,
    model_headers,
    raise_for_status,
    snippet,
)

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

RerankApi = Literal["vllm", "tei", "cohere"]

# How much of an unparseable error body goes into an exception message.


# --- JSON boundary shapes ---------------------------------------------------------------------------


class VllmRerankRequest(TypedDict):
    """vLLM `POST /v1/rerank` (also `/rerank`, `/v2/rerank`)."""

    model: str
    query: str
    documents: list[str]
    top_n: int
    # -1 = the model's maximum: an over-long document is truncated instead of failing the call.
    truncate_prompt_tokens: int


class TeiRerankRequest(TypedDict):
    """Hugging Face text-embeddings-inference `POST /rerank`."""

    query: str
    texts: list[str]
    raw_scores: bool
    truncate: bool


class CohereRerankRequest(TypedDict):
    """Cohere v2 / Jina v1 style `POST /v1/rerank`."""

    model: str
    query: str
    documents: list[str]
    top_n: int


class RerankDocument(TypedDict):
    text: str


class _RerankResultBase(TypedDict):
    index: int
    relevance_score: float


class RerankResult(_RerankResultBase, total=False):
    """One entry of `results` (vLLM and Cohere); `document` is vLLM-only."""

    document: RerankDocument


class RerankUsage(TypedDict):
    total_tokens: int


class RerankResponse(TypedDict):
    """vLLM's rerank answer; results sorted by `relevance_score`, highest first."""

    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class TeiScore(TypedDict):
    """One entry of TEI's bare-list answer."""

    index: int
    score: float


class ModelCard(TypedDict, total=False):
    id: str
    object: str
    created: int
    owned_by: str
    root: str
    max_model_len: int


class ModelList(TypedDict):
    """OpenAI-style `GET /v1/models` answer."""

    object: str
    data: list[ModelCard]


class ErrorDetail(TypedDict, total=False):
    message: str
    type: str
    param: str | None
    code: int


class ErrorResponse(TypedDict):
    """vLLM >= 0.10.1 error body; older versions put `message` etc. at the top level with `object: error`."""

    error: ErrorDetail


# --- pure helpers -----------------------------------------------------------------------------------


def format_qwen3_query(instruction: str, query: str) -> str:
    """The query string Qwen3-Reranker expects: system prompt, instruction and query."""
    return f"{QWEN3_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n"


def format_qwen3_document(text: str) -> str:
    """One document as Qwen3-Reranker expects it, ending with the assistant turn opener."""
    return f"<Document>: {text}{QWEN3_SUFFIX}"


def build_request(
    cfg: RerankerConfig, instruction: str, query: str, documents: Sequence[str]
) -> tuple[str, dict[str, object]]:
    """The path and JSON payload of one rerank call for `cfg.api`, wrapped per `cfg.prompt_format`."""
    if cfg.prompt_format == "qwen3":
        query = format_qwen3_query(instruction, query)
        texts = [format_qwen3_document(doc) for doc in documents]
    else:
        texts = list(documents)
    if cfg.api == "vllm":
        vllm: VllmRerankRequest = {
            "model": cfg.model,
            "query": query,
            "documents": texts,
            "top_n": len(texts),
            "truncate_prompt_tokens": -1,
        }
        return "/v1/rerank", dict(vllm)
    if cfg.api == "tei":
        tei: TeiRerankRequest = {"query": query, "texts": texts, "raw_scores": False, "truncate": True}
        return "/rerank", dict(tei)
    if cfg.api == "cohere":
        cohere: CohereRerankRequest = {
            "model": cfg.model,
            "query": query,
            "documents": texts,
            "top_n": len(texts),
        }
        return "/v1/rerank", dict(cohere)
    raise ValueError(f"reranker.api {cfg.api!r} is not a rerank API this client speaks")


def parse_scores(api: str, body: bytes, n_docs: int) -> list[float]:
    """Scores in the order of the documents sent; else `RerankerBadResponse` (one finite score per doc)."""
    if api in ("vllm", "cohere"):
        score_key = "relevance_score"
    elif api == "tei":
        score_key = "score"
    else:
        raise ValueError(f"reranker.api {api!r} is not a rerank API this client speaks")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RerankerBadResponse(f"not valid JSON: {snippet(body, 60)}") from exc
    if score_key == "score":
        if not isinstance(data, list):
            raise RerankerBadResponse(f"expected a JSON list, got {_kind(data)}")
        items: list[object] = data
    else:
        if not isinstance(data, dict):
            raise RerankerBadResponse(f"expected a JSON object, got {_kind(data)}")
        results = data.get("results")
        if not isinstance(results, list):
            raise RerankerBadResponse(f"expected 'results' to be a list, got {_kind(results)}")
        items = results
    if len(items) != n_docs:
        raise RerankerBadResponse(f"expected {n_docs} results, got {len(items)}")
    scores: list[float | None] = [None] * n_docs
    isfinite = math.isfinite
    for item in items:
        # A well-formed result passes these exact-type checks at once; anything else gets the full ones
        # below, which name what is wrong.
        if type(item) is dict:
            index, score = item.get("index"), item.get(score_key)
            if (
                type(index) is int
                and type(score) is float
                and 0 <= index < n_docs
                and scores[index] is None
                and isfinite(score)
            ):
                scores[index] = score
                continue
        index, value = _checked_result(item, score_key, n_docs, scores)
        scores[index] = value
    # Every slot is filled: n_docs unique in-range indexes.
    return [s for s in scores if s is not None]


def _checked_result(
    item: object, score_key: str, n_docs: int, scores: Sequence[float | None]
) -> tuple[int, float]:
    """One result's index and score, or the `RerankerBadResponse` that says what is wrong with it."""
    if not isinstance(item, dict):
        raise RerankerBadResponse(f"expected each result to be an object, got {_kind(item)}")
    index = item.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise RerankerBadResponse(f"result index is not an integer: {_kind(index)}")
    if not 0 <= index < n_docs:
        raise RerankerBadResponse(f"result index {index} out of range for {n_docs} documents")
    if scores[index] is not None:
        raise RerankerBadResponse(f"result index {index} appears twice")
    score = item.get(score_key)
    if not isinstance(score, int | float) or isinstance(score, bool):
        raise RerankerBadResponse(f"result {index}: {score_key} is not a number: {_kind(score)}")
    if not math.isfinite(score):
        raise RerankerBadResponse(f"result {index}: {score_key} is not finite")
    return index, float(score)


def _kind(value: object) -> str:
    names = {type(None): "null", dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


# --- the client -------------------------------------------------------------------------------------


class RerankerClient:
    """One HTTP call per method on an injected session; failures become `Reranker*` exceptions."""

    def __init__(self, session: ModelSession, cfg: RerankerConfig, instruction: str) -> None:
        if cfg.api not in ("vllm", "tei", "cohere"):
            raise ValueError(f"reranker.api {cfg.api!r} is not a rerank API this client speaks")
        self._session = session
        self._cfg = cfg
        self._instruction = instruction
        self._headers = model_headers(cfg)

    @property
    def config(self) -> RerankerConfig:
        return self._cfg

    async def score(self, url: str, query: str, documents: Sequence[str], timeout_s: float) -> list[float]:
        """Scores for `documents` in their order, from one POST to the model server at `url`."""
        if not documents:
            return []  # nothing to rank; vLLM would answer 400 for an empty list anyway
        path, payload = build_request(self._cfg, self._instruction, query, documents)
        status, body = await self._call("POST", url, path, timeout_s, orjson.dumps(payload))
        raise_for_status(status, body)
        try:
            return parse_scores(self._cfg.api, body, len(documents))
        except RerankerBadResponse as exc:
            raise ModelServerBadResponse(f"HTTP {status}: {exc}", status=status) from exc

    async def health(self, url: str, timeout_s: float) -> bool:
        """True if `GET /health` answers 200 in time; never raises for model-server failures."""
        try:
            status, _ = await self._call("GET", url, "/health", timeout_s, None)
        except (RerankerUnavailable, RerankerTimeout):
            return False
        return status == 200

    async def models(self, url: str, timeout_s: float) -> list[str]:
        """The model ids `GET /v1/models` lists."""
        status, body = await self._call("GET", url, "/v1/models", timeout_s, None)
        raise_for_status(status, body)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            message = f"models: not valid JSON: {snippet(body, 60)}"
            raise ModelServerBadResponse(message, status=status) from exc
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ModelServerBadResponse("models: expected an object with a 'data' list", status=status)
        ids: list[str] = []
        for entry in entries:
            model_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(model_id, str):
                raise ModelServerBadResponse("models: an entry has no string 'id'", status=status)
            ids.append(model_id)
        return ids

    async def _call(
        self, method: str, url: str, path: str, timeout_s: float, data: bytes | None
    ) -> tuple[int, bytes]:
        return await call_model_server(self._session, method, url, path, data, self._headers, timeout_s)
