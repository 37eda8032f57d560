"""exchange: what the pipeline reads of a client's request, whichever path carried it."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.edge.exchange import query_params

# Query strings as clients write them: names and values with and without percent-escapes and `+`,
# blank values, bare names, empty pairs, repeated names, `=` inside values.
_PIECES = st.sampled_from(
    ["q", "size", "sort", "_source", "a", "", "=", "&", "%20", "%zz", "+", "%2B", "é", ":"]
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("q=title:rust&sort=_doc", {"q": "title:rust", "sort": "_doc"}),
        ("size=5&size=7", {"size": "7"}),  # the last one wins, as in Elasticsearch
        ("pretty&q=", {"pretty": "", "q": ""}),
        ("&&q=a&", {"q": "a"}),
        ("q=a=b", {"q": "a=b"}),
        ("q=deep+learning", {"q": "deep learning"}),
        ("q=%E5%9B%BE%E4%B9%A6", {"q": "图书"}),
        ("=x", {"": "x"}),
    ],
)
def test_query_params_reads_a_query_string_as_elasticsearch_is_sent_it(
    query: str, expected: dict[str, str]
) -> None:
    assert query_params(query) == expected


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_query_params_is_parse_qsl_keeping_the_last_value(query: str) -> None:
    # The split without decoding must be exact: whatever it returns, parse_qsl would have.
    assert query_params(query) == dict(parse_qsl(query, keep_blank_values=True))
