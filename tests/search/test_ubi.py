"""`ext.ubi` taken out of search bodies, and nothing else touched."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.observe.ubi_queries import UbiRequest
from es_rerank_proxy.search.ubi import page_bounds, search_bodies, strip_msearch, strip_search

UBI = {
    "query_id": "q-1",
    "client_id": "c-9",
    "user_query": "神经 检索",
    "object_id_field": "isbn",
    "application": "opac",
    "query_attributes": {"page": "results"},
}
PARSED = UbiRequest(
    query_id="q-1",
    client_id="c-9",
    user_query="神经 检索",
    object_id_field="isbn",
    application="opac",
    query_attributes={"page": "results"},
)


@pytest.mark.parametrize(
    ("body", "expected_body", "expected_ubi"),
    [
        ({"query": {"match_all": {}}, "ext": {"ubi": UBI}}, {"query": {"match_all": {}}}, PARSED),
        (
            {"ext": {"ubi": UBI, "other": {"a": 1}}, "size": 3},
            {"ext": {"other": {"a": 1}}, "size": 3},
            PARSED,
        ),
        ({"ext": {"ubi": {"query_id": 42}}}, {}, UbiRequest(query_id="42")),  # numeric ids kept as text
        ({"ext": {"ubi": "nonsense"}}, {}, UbiRequest()),
        ({"ext": {"ubi": {"query_id": ["x"], "query_attributes": []}}}, {}, UbiRequest()),
    ],
)
def test_strip_search_removes_ext_ubi_and_reads_it(
    body: dict[str, object], expected_body: dict[str, object], expected_ubi: UbiRequest
) -> None:
    stripped, ubi = strip_search(orjson.dumps(body))
    assert orjson.loads(stripped) == expected_body
    assert ubi == expected_ubi


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"query": {"match": {"title": "ext"}}}',
        b'{"ext": {"other": {}}, "size": 1}',  # another ext still bypasses as before, untouched
        b'{"query":  {"match_all": {} },\n "size": 1 }',
        b'{"ext": {"ubi": ',  # unreadable: Elasticsearch answers it
        b'["ext", {"ubi": 1}]',
        b'{"query": {"match": {"title": "\\u795e\\u7ecf"}}}',
    ],
)
def test_body_without_ext_ubi_is_the_same_bytes(body: bytes) -> None:
    assert strip_search(body) == (body, None)


@given(
    st.dictionaries(
        st.text(max_size=6).filter(lambda key: key != "ext"),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(), lambda c: st.lists(c)
        ),
        max_size=5,
    ),
    st.text(max_size=20),
)
def test_only_ext_ubi_goes_and_the_rest_survives(body: dict[str, object], query_id: str) -> None:
    stripped, ubi = strip_search(orjson.dumps({**body, "ext": {"ubi": {"query_id": query_id}}}))
    assert orjson.loads(stripped) == body
    assert ubi == UbiRequest(query_id=query_id)


def test_strip_msearch_rewrites_only_searches_with_ext_ubi() -> None:
    body = (
        b'{"index": "a"}\n{"query": {"match_all": {}}, "ext": {"ubi": {"query_id": "q-1"}}}\n\n{"size":  2}\n'
    )
    stripped, requests = strip_msearch(body)
    assert stripped == b'{"index": "a"}\n{"query":{"match_all":{}}}\n{}\n{"size":  2}\n'
    assert requests == (UbiRequest(query_id="q-1"), None)


@pytest.mark.parametrize(
    "body",
    [b'{}\n{"size": 1}\n{"index": "b"}\n{"ext": {"x": 1}}\n', b'{}\n{"ext": {"ubi": {}}}', b"not ndjson\n"],
)
def test_msearch_without_ext_ubi_or_unreadable_is_the_same_bytes(body: bytes) -> None:
    assert strip_msearch(body)[0] == body


@pytest.mark.parametrize(
    ("body", "params", "expected"),
    [
        (b"", {}, (0, 10)),
        (b'{"from": 20, "size": 5}', {}, (20, 5)),
        (b'{"from": 20, "size": 5}', {"from": "30", "size": "7"}, (30, 7)),
        (b'{"from": "x", "size": -1}', {}, (0, 10)),
        (b"not json", {"size": "3"}, (0, 3)),
    ],
)
def test_page_bounds(body: bytes, params: dict[str, str], expected: tuple[int, int]) -> None:
    assert page_bounds(body, params) == expected


def test_search_bodies_lists_each_search() -> None:
    assert search_bodies("search", b'{"size": 1}') == (b'{"size": 1}',)
    assert search_bodies("msearch", b'{}\n{"size": 1}\n{}\n{"size": 2}\n') == (b'{"size": 1}', b'{"size": 2}')
