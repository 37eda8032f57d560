"""msearch: NDJSON split and join as Elasticsearch reads them, per-search planning."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.config import RerankConfig
from es_rerank_proxy.search.msearch import (
    MsearchItem,
    join_msearch,
    msearch_item_indices,
    plan_msearch_item,
    split_msearch,
)
from es_rerank_proxy.search.plan import Bypass, NeededFields, SearchPlan

RERANK = RerankConfig(indices=("library-*",))
NEEDED = NeededFields(text_fields=("title",), date_field="", citations_field="")
SEARCH = b'{"query":{"match":{"title":"deep learning"}},"size":5}'


def items(body: bytes) -> list[MsearchItem]:
    result = split_msearch(body)
    assert isinstance(result, list), result
    return result


def pairs(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(item.header_raw, item.body_raw) for item in items(body)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"index":"a"}\n{"size":1}\n', [(b'{"index":"a"}', b'{"size":1}')]),
        (b"{}\n{}\n{}\n{}\n", [(b"{}", b"{}"), (b"{}", b"{}")]),
        (b'\n{"size":1}\n', [(b"{}", b'{"size":1}')]),
        (b'{}\n{"size":1}\n\n{"size":2}\n', [(b"{}", b'{"size":1}'), (b"{}", b'{"size":2}')]),
        (b"{}\n{}\n\n", [(b"{}", b"{}")]),
        (b'{"index":"a"}\r\n{"size":1}\r\n', [(b'{"index":"a"}\r', b'{"size":1}\r')]),
        (b' { "index" : "a" } \n {"size":1} \n', [(b' { "index" : "a" } ', b' {"size":1} ')]),
        ('{"index":"图书"}\n{"query":{"match":{"t":"机器学习"}}}\n'.encode(), [
            ('{"index":"图书"}'.encode(), '{"query":{"match":{"t":"机器学习"}}}'.encode())
        ]),
    ],
)  # fmt: skip
def test_split_msearch_reads_lines_as_elasticsearch_does(
    body: bytes, expected: list[tuple[bytes, bytes]]
) -> None:
    assert pairs(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n",
        b"\n\n",
        b"{}\n",
        b"{}\n{}\n{}\n",
        b'{"index":"a"\n{}\n',
        b"{}\n{bad}\n",
        b"[]\n{}\n",
        b"{}\n[]\n",
        b'{}\n"q"\n',
        b"{}\n\n",
        b"{}\n{}\n\n\n",
        b" \n{}\n",
        b'{"index":"a"}\n{"size":1}',
        b"{}\n{}\n{}\n{}",
        b"\n{}\n{}\n",
        b'{}\n{}\n{"index":"a"}\n',
    ],
)
def test_split_msearch_rejects_what_elasticsearch_would_not_read_as_pairs(body: bytes) -> None:
    assert split_msearch(body) == Bypass("invalid_json")


def test_split_msearch_parses_headers() -> None:
    got = items(b'{"index":["a","b"],"preference":"p"}\n{}\n\n{}\n')
    assert [item.header for item in got] == [{"index": ["a", "b"], "preference": "p"}, {}]


def test_join_msearch_ends_every_line_with_a_newline() -> None:
    assert (
        join_msearch([(b"{}", b'{"a":1}'), (b'{"index":"x"}', b"{}")]) == b'{}\n{"a":1}\n{"index":"x"}\n{}\n'
    )
    assert join_msearch([]) == b""


def test_an_empty_first_header_is_written_back_as_an_object() -> None:
    # An empty line first is the `{}` header in ES 8/9; written back explicitly it means the same.
    joined = join_msearch(pairs(b"\n" + SEARCH + b"\n"))
    assert joined == b"{}\n" + SEARCH + b"\n"
    assert pairs(joined) == [(b"{}", SEARCH)]


headers = st.dictionaries(
    st.sampled_from(["index", "preference", "routing", "search_type", "request_cache"]),
    st.one_of(st.text(max_size=10), st.booleans(), st.lists(st.text(max_size=5), max_size=3)),
)
bodies = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)


@given(st.lists(st.tuples(headers, bodies), min_size=1, max_size=6))
def test_split_then_join_round_trips(searches: list[tuple[dict[str, object], dict[str, object]]]) -> None:
    lines = [(orjson.dumps(header), orjson.dumps(body)) for header, body in searches]
    joined = join_msearch(lines)
    assert joined.endswith(b"\n")
    got = items(joined)
    assert [(item.header_raw, item.body_raw) for item in got] == lines
    assert [item.header for item in got] == [header for header, _ in searches]
    assert join_msearch([(item.header_raw, item.body_raw) for item in got]) == joined


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({}, ("library-url",)),
        ({"index": "library-a"}, ("library-a",)),
        ({"index": "library-a,library-b"}, ("library-a", "library-b")),
        ({"index": ["library-a", "library-b,library-c"]}, ("library-a", "library-b", "library-c")),
        ({"indices": ["library-x"]}, ("library-x",)),
        ({"preference": "p"}, ("library-url",)),
    ],
)
def test_item_indices_come_from_the_header_else_the_url(
    header: dict[str, object], expected: tuple[str, ...]
) -> None:
    item = MsearchItem(header=header, header_raw=orjson.dumps(header), body_raw=b"{}")
    assert msearch_item_indices(item, ("library-url",)) == expected


def plan_item(
    header: dict[str, object], body: bytes = SEARCH, params: dict[str, str] | None = None
) -> SearchPlan | Bypass:
    item = MsearchItem(header=header, header_raw=orjson.dumps(header), body_raw=body)
    return plan_msearch_item(item, ("library-url",), params or {}, RERANK, NEEDED, None)


def test_msearch_item_is_planned_like_a_search() -> None:
    params = {"max_concurrent_searches": "4", "typed_keys": "true", "rest_total_hits_as_int": "true"}
    header: dict[str, object] = {
        "index": "library-1",
        "search_type": "query_then_fetch",
        "preference": "_local",
        "routing": "r",
        "request_cache": True,
        "allow_partial_search_results": False,
        "expand_wildcards": "open",
        "ignore_unavailable": True,
    }
    result = plan_item(header, params=params)
    assert isinstance(result, SearchPlan)
    assert (result.query_text, result.client_from, result.client_size) == ("deep learning", 0, 5)
    assert orjson.loads(result.recall_body) == {"query": {"match": {"title": "deep learning"}}, "size": 100}
    assert result.recall_params == params


def test_header_query_applies_to_msearch_items() -> None:
    item = MsearchItem(header={}, header_raw=b"{}", body_raw=b'{"query":{"match_all":{}}}')
    result = plan_msearch_item(item, ("library-1",), {}, RERANK, NEEDED, "typed words")
    assert isinstance(result, SearchPlan) and result.query_text == "typed words"


@pytest.mark.parametrize(
    ("header", "body", "params", "reason"),
    [
        ({"index": "library-1", "sort": "x"}, SEARCH, {}, "unsupported_header_key"),
        ({"index": "library-1", "size": 10}, SEARCH, {}, "unsupported_header_key"),
        ({"index": "other"}, SEARCH, {}, "index_not_configured"),
        ({"index": ["library-1", "other"]}, SEARCH, {}, "index_not_configured"),
        ({}, SEARCH, {"filter_path": "responses.hits"}, "filter_path"),
        ({}, SEARCH, {"size": "10"}, "unsupported_param"),
        ({}, SEARCH, {"scroll": "1m"}, "unsupported_param"),
        ({}, b'{"query":{"match":{"t":"x"}},"sort":["year"]}', {}, "sort"),
        ({}, b'{"query":{"match":{"t":"x"}},"size":0}', {}, "size_zero"),
        ({}, b'{"query":{"match":{"t":"x"}},"from":99,"size":5}', {}, "window_exceeded"),
        ({}, b'{"query":{"match_all":{}}}', {}, "no_query_text"),
        ({}, b'{"query":{"match":{"t":"x"}},"stored_fields":[]}', {}, "unsupported_body_key"),
        ({}, b"{nope", {}, "invalid_json"),
    ],
)
def test_msearch_item_bypass_reasons(
    header: dict[str, object], body: bytes, params: dict[str, str], reason: str
) -> None:
    assert plan_item(header, body, params) == Bypass(reason)
