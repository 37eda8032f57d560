"""Which requests are searches, and which indices the proxy reranks (search/endpoint.py)."""

from __future__ import annotations

import pytest

from es_rerank_proxy.search.endpoint import SearchEndpoint, classify_endpoint, indices_match

# --- classify_endpoint ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/_search", SearchEndpoint("search", ())),
        ("POST", "/_search", SearchEndpoint("search", ())),
        ("post", "/_search/", SearchEndpoint("search", ())),
        ("GET", "/library/_search", SearchEndpoint("search", ("library",))),
        ("POST", "/library,archive/_search", SearchEndpoint("search", ("library", "archive"))),
        ("POST", "/library%2Carchive/_search", SearchEndpoint("search", ("library", "archive"))),
        ("POST", "/library-%2A/_search", SearchEndpoint("search", ("library-*",))),
        ("POST", "/library-*/_search/", SearchEndpoint("search", ("library-*",))),
        ("POST", "/_all/_search", SearchEndpoint("search", ("_all",))),
        ("POST", "/-old,lib*/_search", SearchEndpoint("search", ("-old", "lib*"))),
        ("POST", "/.hidden/_search", SearchEndpoint("search", (".hidden",))),
        ("POST", "/remote:library/_search", SearchEndpoint("search", ("remote:library",))),
        ("GET", "/_msearch", SearchEndpoint("msearch", ())),
        ("POST", "/library/_msearch", SearchEndpoint("msearch", ("library",))),
        ("POST", "/a%2cb/_msearch/", SearchEndpoint("msearch", ("a", "b"))),
        ("PUT", "/_search", None),
        ("DELETE", "/library/_search", None),
        ("HEAD", "/_search", None),
        ("GET", "/_search/scroll", None),
        ("DELETE", "/_search/scroll", None),
        ("POST", "/library/_search/template", None),
        ("POST", "/_search/template", None),
        ("POST", "/_msearch/template", None),
        ("POST", "/library/_msearch/template", None),
        ("POST", "/_async_search", None),
        ("POST", "/library/_async_search", None),
        ("POST", "/_pit", None),
        ("POST", "/library/_pit", None),
        ("POST", "/_search_shards", None),
        ("GET", "/library/_count", None),
        ("POST", "/library/_doc/1", None),
        ("GET", "/", None),
        ("POST", "/a/b/_search", None),
        ("POST", "//_search", None),
        ("POST", "/_SEARCH", None),
        ("POST", "/_security/_search", None),
        ("POST", "/%2C/_search", None),
    ],
)
def test_classify_endpoint(method: str, path: str, expected: SearchEndpoint | None) -> None:
    assert classify_endpoint(method, path) == expected


# --- indices_match ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "patterns", "expected"),
    [
        ((), ("*",), True),
        ((), ("library-*",), False),
        (("_all",), ("*",), True),
        (("_all",), ("library-*",), False),
        (("*",), ("*",), True),
        (("*",), ("library-*",), False),
        (("library-2024",), ("library-*",), True),
        (("library-2024", "library-2023"), ("library-*",), True),
        (("library-2024", "catalogue"), ("library-*",), False),
        (("library-2024", "catalogue"), ("library-*", "catalogue"), True),
        (("library-*",), ("library-*",), True),
        (("library-20*",), ("library-*",), True),
        (("lib*",), ("library-*",), False),
        (("library-*",), ("library-2024",), False),
        (("li?rary",), ("li?rary",), True),
        (("library-*",), ("library-?*",), False),
        (("-library-old", "library-*"), ("library-*",), False),
        (("-library-old", "library-*"), ("*",), True),
        (("Library",), ("library",), False),
        (("remote:library",), ("library",), False),
        (("remote:library",), ("*:library",), True),
    ],
)
def test_indices_match(indices: tuple[str, ...], patterns: tuple[str, ...], expected: bool) -> None:
    assert indices_match(indices, patterns) is expected
