"""A deterministic Elasticsearch stand-in: the same request bytes always get the same answer bytes.

It answers searches with a plausible 30-hit window (so the proxy can rerank them), `_msearch` with one answer
per line pair, and everything else with a digest of what it got. Bodies it cannot read get a 400 in
Elasticsearch's shape, as Elasticsearch would refuse them.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from aiohttp import web

from .serving import local_server

_HEADERS = {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"}
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass
class EchoElasticsearch:
    url: str = ""


def _error(status: int, kind: str) -> web.Response:
    body = {
        "error": {"root_cause": [{"type": kind, "reason": kind}], "type": kind, "reason": kind},
        "status": status,
    }
    return web.Response(status=status, body=orjson.dumps(body), headers=_HEADERS)


def _window(seed: bytes, size: int) -> dict[str, object]:
    digest = hashlib.sha256(seed).digest()
    hits = [
        {
            "_index": "library",
            "_id": f"{digest[i % 32]}-{i}",
            "_score": round(30.0 - i - digest[i % 32] / 1000, 3),
            "_source": {"title": f"document {digest[(i * 7) % 32]} about topic {i}", "abstract": "text"},
        }
        for i in range(min(size, 30))
    ]
    return {
        "took": 1,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {
            "total": {"value": 30, "relation": "eq"},
            "max_score": hits[0]["_score"] if hits else None,
            "hits": hits,
        },
    }


def _search_answer(body: bytes, seed: bytes) -> tuple[int, object]:
    if not body.strip():
        return 200, _window(seed, 10)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400, None
    if not isinstance(parsed, dict):
        return 400, None
    size = parsed.get("size", 10)
    return 200, _window(seed, size if isinstance(size, int) and 0 <= size <= 1000 else 10)


@asynccontextmanager
async def echo_elasticsearch() -> AsyncIterator[EchoElasticsearch]:
    state = EchoElasticsearch()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        body = raw
        if encoding and encoding != "identity":
            if encoding not in _WBITS:
                return _error(400, "unsupported_encoding")
            try:
                inflater = zlib.decompressobj(_WBITS[encoding])
                body = inflater.decompress(raw, 64 << 20)
            except zlib.error:
                return _error(400, "x_content_parse_exception")
        seed = request.method.encode() + request.raw_path.encode() + b"\0" + body
        path = request.rel_url.raw_path
        if path.endswith("/_search"):
            status, answer = _search_answer(body, seed)
            return (
                web.Response(body=orjson.dumps(answer), headers=_HEADERS)
                if status == 200
                else _error(400, "parsing_exception")
            )
        if path.endswith("/_msearch"):
            lines = body.split(b"\n")
            responses = [
                _search_answer(b, seed + bytes([i]))[1] or {"error": "parse", "status": 400}
                for i, b in enumerate(lines[1::2])
            ]
            return web.Response(body=orjson.dumps({"took": 1, "responses": responses}), headers=_HEADERS)
        digest = hashlib.sha256(seed).hexdigest()
        return web.Response(body=orjson.dumps({"acknowledged": True, "sha256": digest}), headers=_HEADERS)

    async with local_server(handle) as url:
        state.url = url
        yield state
