"""Reading search request bodies and writing Elasticsearch-shaped answers: the HTTP edges of the pipeline."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from .exchange import Answer, ClientRequest, web_response
from .headers import forwardable_request_headers, forwardable_response_headers
from .upstream import error_body

_GZIP_LEVEL = 1
# Request headers that describe the client's body; the recall request carries a body of its own.
_BODY_HEADERS = (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.ACCEPT_ENCODING)


@dataclass(frozen=True, slots=True)
class Body:
    raw: bytes  # exactly as the client sent it: what a bypass forwards
    decoded: bytes | None  # decompressed; None when the proxy will not read it (Elasticsearch must answer it)
    refusal: str | None = None  # why `decoded` is None

    def __init__(self, raw: bytes, decoded: bytes | None, refusal: str | None = None) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "decoded", decoded)
        object.__setattr__(self, "refusal", refusal)


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """What the pipeline needs of a client request, captured once so background work never touches it."""

    method: str
    raw_path: str
    raw_path_qs: str  # path and query string exactly as the client encoded them
    params: dict[str, str]
    # The client's own, as sent (credentials included); `recall_headers` leaves out what must not be
    # forwarded. Read only then: a search that is not reranked needs no copy of them.
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    header_query: str | None
    explain: bool
    accepts_gzip: bool

    def __init__(
        self,
        method: str,
        raw_path: str,
        raw_path_qs: str,
        params: dict[str, str],
        headers: CIMultiDictProxy[str] | CIMultiDict[str],
        header_query: str | None,
        explain: bool,
        accepts_gzip: bool,
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "raw_path", raw_path)
        object.__setattr__(self, "raw_path_qs", raw_path_qs)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "header_query", header_query)
        object.__setattr__(self, "explain", explain)
        object.__setattr__(self, "accepts_gzip", accepts_gzip)

    @classmethod
    def capture(cls, request: ClientRequest) -> SearchRequest:
        headers = request.headers
        return cls(
            method=request.method,
            raw_path=request.raw_path,
            raw_path_qs=request.target,
            params=request.params(),
            headers=headers,
            # A header whose bytes are not UTF-8 is no query text; it must not reach the model's request.
            header_query=readable_header(headers.get("X-Rerank-Query")),
            explain=headers.get("X-Rerank-Explain", "").strip().lower() in ("true", "1", "yes"),
            accepts_gzip="gzip" in headers.get(hdrs.ACCEPT_ENCODING, "").lower(),
        )

    def recall_headers(self, *, ndjson: bool = False) -> CIMultiDict[str]:
        """The client's headers for a rewritten, uncompressed body whose answer the proxy must parse."""
        headers = forwardable_request_headers(self.headers)
        for name in _BODY_HEADERS:
            headers.popall(name, None)
        if hdrs.CONTENT_TYPE not in headers:
            headers[hdrs.CONTENT_TYPE] = "application/x-ndjson" if ndjson else "application/json"
        return headers


def decode_body(raw: bytes, headers: CIMultiDictProxy[str], max_decoded_bytes: int) -> Body:
    """The body as sent, and its decompressed form for parsing, bounded."""
    encoding = headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if not encoding or encoding == "identity":
        return Body(raw, raw)
    wbits = _WBITS.get(encoding)
    if wbits is None:
        return Body(raw, None, "undecodable_body")
    return decompress_bounded(raw, wbits, max_decoded_bytes)


# gzip: a gzip header; deflate: HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_INFLATE_STEP = 256 * 1024


def decompress_bounded(raw: bytes, wbits: int, max_bytes: int) -> Body:
    """Inflate `raw` in steps, stopping as soon as the output passes `max_bytes` (a zip bomb costs no more).

    Concatenated gzip members are read as one body, as `gzip.decompress` and Elasticsearch do.
    """
    out = bytearray()
    data = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            while data:
                out += inflater.decompress(data, _INFLATE_STEP)
                if len(out) > max_bytes:
                    return Body(raw, None, "body_too_large")
                data = inflater.unconsumed_tail
            out += inflater.flush()
            if not inflater.eof:
                return Body(raw, None, "undecodable_body")  # truncated
            data = inflater.unused_data
            if not data.strip(b"\0"):
                break
    except zlib.error:
        return Body(raw, None, "undecodable_body")
    if len(out) > max_bytes:
        return Body(raw, None, "body_too_large")
    return Body(raw, bytes(out))


def readable_header(value: str | None) -> str | None:
    """A header's text, or None when its bytes were not UTF-8 (aiohttp keeps them as lone surrogates)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def query_string(params: Mapping[str, str]) -> str:
    return "?" + urlencode(params, quote_via=quote, safe=",*:") if params else ""


def json_object(payload: bytes) -> dict[str, object] | None:
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def json_answer(
    accepts_gzip: bool, es_headers: CIMultiDictProxy[str], body: bytes, extra: Mapping[str, str]
) -> Answer:
    """A 200 with Elasticsearch's headers (length and encoding recomputed) and the proxy's own."""
    headers = forwardable_response_headers(es_headers)
    for name in (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING):
        headers.popall(name, None)
    headers.update(extra)
    if accepts_gzip:
        # Level 1, inline: a 14 KB page in 0.08 ms and 5.3 KB, where aiohttp's default level 6 took 0.4 ms
        # for 4.6 KB (profile_search.py, browsers' searches): the proxy's own time is the scarcer one.
        compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = compressor.compress(body) + compressor.flush()
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    return Answer(200, headers, body)


def raw_answer(
    status: int, es_headers: CIMultiDictProxy[str], payload: bytes, extra: Mapping[str, str]
) -> Answer:
    """Elasticsearch's answer exactly, plus the proxy's headers."""
    headers = forwardable_response_headers(es_headers)
    headers.popall(hdrs.CONTENT_LENGTH, None)
    headers.update(extra)
    return Answer(status, headers, payload)


def es_error_answer(status: int, error_type: str, reason: str) -> Answer:
    """The proxy's own error, in Elasticsearch's shape."""
    headers = CIMultiDict({hdrs.CONTENT_TYPE: "application/json", "X-Elastic-Product": "Elasticsearch"})
    return Answer(status, headers, error_body(status, error_type, reason))


def es_error(status: int, error_type: str, reason: str) -> web.Response:
    return web_response(es_error_answer(status, error_type, reason))
