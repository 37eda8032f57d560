"""Fuzzing the public listener: whatever the proxy does not rerank, it answers exactly as Elasticsearch.

Random and mutated search bodies (deep and wide JSON, every query type the query-text walker knows, invalid
UTF-8, huge strings, numbers as strings, NaN/Infinity, duplicate keys), URL parameters, `_msearch` NDJSON
and `Content-Encoding`s go to the proxy and, byte for byte the same, straight to a deterministic
Elasticsearch stand-in. Bounded: a few hundred examples, well under two minutes.
"""

from __future__ import annotations

import gzip
import http.client
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ..fakes.echo_elasticsearch import EchoElasticsearch, echo_elasticsearch
from ..fakes.fake_reranker import FakeReranker
from ..fakes.proxy_server import RunningProxy, make_config, proxy_process
from ..fakes.threaded import in_thread

MAX_RSS = 200 << 20
WORDS = st.sampled_from(
    ["deep", "learning", "图书馆", "ünïcode", "", " ", "a" * 300, '"quoted"', "\\", "\x00"]
)
TEXT = st.one_of(WORDS, st.text(max_size=40))
FIELD = st.sampled_from(["title", "abstract", "title^2", "*", "nested.field", ""])


def _query_types(text: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    """Every query shape the query-text walker reads, with random text and fields."""
    leaf = st.one_of(
        st.builds(lambda f, t: {"match": {f: t}}, FIELD, text),
        st.builds(lambda f, t: {"match": {f: {"query": t, "operator": "and"}}}, FIELD, text),
        st.builds(lambda f, t: {"match_phrase": {f: t}}, FIELD, text),
        st.builds(lambda f, t: {"match_phrase_prefix": {f: {"query": t}}}, FIELD, text),
        st.builds(lambda f, t: {"match_bool_prefix": {f: t}}, FIELD, text),
        st.builds(
            lambda fs, t: {"multi_match": {"query": t, "fields": fs}}, st.lists(FIELD, max_size=3), text
        ),
        st.builds(
            lambda fs, t: {"combined_fields": {"query": t, "fields": fs}}, st.lists(FIELD, max_size=3), text
        ),
        st.builds(lambda t: {"query_string": {"query": t}}, text),
        st.builds(lambda t: {"simple_query_string": {"query": t}}, text),
        st.builds(lambda f, t: {"term": {f: t}}, FIELD, text),
        st.just({"match_all": {}}),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(
                lambda m, s: {"bool": {"must": m, "should": s}},
                st.lists(inner, max_size=3),
                st.lists(inner, max_size=2),
            ),
            st.builds(lambda q: {"bool": {"filter": q}}, inner),
            st.builds(lambda qs: {"dis_max": {"queries": qs}}, st.lists(inner, max_size=3)),
            st.builds(lambda q: {"function_score": {"query": q}}, inner),
            st.builds(lambda q: {"constant_score": {"filter": q}}, inner),
            st.builds(lambda q: {"boosting": {"positive": q, "negative": q}}, inner),
            st.builds(lambda q: {"nested": {"path": "n", "query": q}}, inner),
        ),
        max_leaves=12,
    )


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TEXT, inner, max_size=6),
    max_leaves=30,
)
PAGING = st.one_of(st.integers(-5, 150), st.sampled_from(["10", "x", None, 1.5, True, [], {}]))


@st.composite
def search_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["query", "query", "json", "deep", "raw", "literal", "huge", "duplicate"]))
    if kind == "query":
        body: dict[str, object] = {"query": draw(_query_types(TEXT))}
        for key in draw(
            st.lists(
                st.sampled_from(["size", "from", "_source", "sort", "ext", "aggs", "explain"]), max_size=3
            )
        ):
            body[key] = draw(PAGING) if key in ("size", "from") else draw(JSON_VALUE)
        return orjson.dumps(body)
    if kind == "json":
        return orjson.dumps(draw(JSON_VALUE))
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(
            st.sampled_from([(b'{"query":', b"}"), (b"[", b"]"), (b'{"bool":{"must":', b"}}")])
        )
        return opener * depth + b"1" + closer * depth
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "literal":
        value = draw(
            st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b'"10"', b"0x10", b"1_000"])
        )
        return b'{"size":' + value + b',"query":{"match":{"title":"deep"}}}'
    if kind == "huge":
        return orjson.dumps({"query": {"match": {"title": "x" * draw(st.integers(10_000, 100_000))}}})
    return b'{"size":1,"size":5,"query":{"match":{"title":"a"}},"query":{"match":{"title":"b"}}}'


@st.composite
def msearch_bodies(draw: st.DrawFn) -> bytes:
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        header = draw(
            st.sampled_from([b"{}", b"", b'{"index":"library"}', b'{"index":["a","b"]}', b"[]", b"{bad"])
        )
        lines += [header, draw(search_bodies())]
    body = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    return body + draw(st.sampled_from([b"\n", b"", b"\n\n"]))


PARAMS = st.dictionaries(
    st.sampled_from(
        ["size", "from", "q", "sort", "explain", "filter_path", "track_total_hits", "pretty", "zzz"]
    ),
    st.one_of(st.sampled_from(["10", "-1", "abc", "_score", "true", "false", ""]), st.text(max_size=10)),
    max_size=3,
)
PATHS = st.sampled_from(
    [
        "/library/_search",
        "/_search",
        "/library,other/_search",
        "/lib%2Cx/_search",
        "/library/_msearch",
        "/_msearch",
    ]
)
ENCODINGS = st.sampled_from([None, None, "gzip", "deflate", "gzip-garbage", "br", "identity", "GZIP"])


def _encode(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    if encoding in ("gzip", "GZIP"):
        return gzip.compress(body), encoding
    if encoding == "deflate":
        return zlib.compress(body), "deflate"
    if encoding == "gzip-garbage":
        return body, "gzip"
    return body, encoding


def _send(
    url: str, method: str, target: str, body: bytes, encoding: str | None
) -> tuple[int, bytes, dict[str, str]]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        kind = "application/x-ndjson" if "_msearch" in target else "application/json"
        connection.putheader("Content-Type", kind)
        if encoding is not None:
            connection.putheader("Content-Encoding", encoding)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, session_fake: FakeReranker
) -> Iterator[tuple[EchoElasticsearch, RunningProxy]]:
    with in_thread(echo_elasticsearch, name="echo-es") as es:
        config = make_config(
            es.url,
            session_fake.url,
            canary={"default": "rerank"},
            rerank={"text_fields": ["title"]},
            reranker={"url": [session_fake.url], "timeout_ms": 5000},
        )
        with proxy_process(config, Path(tmp_path_factory.mktemp("fuzz"))) as proxy:
            yield es, proxy


def _check(
    stack: tuple[EchoElasticsearch, RunningProxy], method: str, target: str, body: bytes, encoding: str | None
) -> None:
    es, proxy = stack
    raw, header = _encode(body, encoding)
    status, payload, headers = _send(proxy.url, method, target, raw, header)
    direct_status, direct_payload, _ = _send(es.url, method, target, raw, header)
    assert status < 500 or direct_status >= 500, (status, payload[:300])
    outcomes = set(headers.get("x-rerank", "skipped").replace("=", ",").split(","))
    if not outcomes & {"applied", "degraded"}:
        assert (status, payload) == (direct_status, direct_payload), headers.get("x-rerank-reason")
    else:
        assert status == 200 and isinstance(orjson.loads(payload), dict)


@pytest.mark.timeout(600)
@settings(
    max_examples=300,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=PATHS,
    params=PARAMS,
    method=st.sampled_from(["POST", "GET"]),
    search=search_bodies(),
    ndjson=msearch_bodies(),
    encoding=ENCODINGS,
)
def test_whatever_is_not_reranked_is_answered_exactly_as_elasticsearch_answers_it(
    stack: tuple[EchoElasticsearch, RunningProxy],
    path: str,
    params: dict[str, str],
    method: str,
    search: bytes,
    ndjson: bytes,
    encoding: str | None,
) -> None:
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    target = path + ("?" + query if query else "")
    _check(stack, method, target, ndjson if "_msearch" in path else search, encoding)


def test_the_proxy_stays_small_after_the_fuzzing(stack: tuple[EchoElasticsearch, RunningProxy]) -> None:
    _, proxy = stack
    for body in (
        b'{"query":' * 3000 + b"1" + b"}" * 3000,
        orjson.dumps({"query": {"match": {"title": "x" * 4_000_000}}}),
    ):
        _check(stack, "POST", "/library/_search", body, "gzip")
    assert proxy.process is not None
    rss = psutil.Process(proxy.process.pid).memory_info().rss
    assert rss < MAX_RSS, f"resident memory {rss >> 20} MB"
