"""search.plan: endpoint classification, index matching, eligibility, the recall rewrite, needed fields."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import pytest

from es_rerank_proxy.config import RerankConfig
from es_rerank_proxy.search.plan import (
    Bypass,
    NeededFields,
    SearchPlan,
    plan_search,
    shadow_plan,
)

RERANK = RerankConfig()  # window 100, indices ("*",)
NEEDED = NeededFields(text_fields=("title", "abstract"), date_field="published", citations_field="citations")
MATCH = {"match": {"title": "deep learning"}}


def plan(
    body: object = None,
    params: Mapping[str, str] | None = None,
    *,
    raw: bytes | None = None,
    indices: tuple[str, ...] = ("library",),
    rerank: RerankConfig = RERANK,
    needed: NeededFields = NEEDED,
    header_query: str | None = None,
) -> SearchPlan | Bypass:
    data = raw if raw is not None else orjson.dumps({"query": MATCH} if body is None else body)
    return plan_search(data, params or {}, indices, rerank, needed, header_query)


def ok(result: SearchPlan | Bypass) -> SearchPlan:
    assert isinstance(result, SearchPlan), result
    return result


def recall(result: SearchPlan | Bypass) -> dict[str, object]:
    body = orjson.loads(ok(result).recall_body)
    assert isinstance(body, dict)
    return body


# --- plan_search: bypass reasons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "params", "reason"),
    [
        ({"query": MATCH, "sort": ["year"]}, {}, "sort"),
        ({"query": MATCH, "sort": [{"year": "desc"}, "_score"]}, {}, "sort"),
        ({"query": MATCH, "sort": {"_score": "asc"}}, {}, "sort"),
        ({"query": MATCH, "sort": [{"_score": {"order": "asc"}}]}, {}, "sort"),
        ({"query": MATCH, "sort": ["_score", "year"]}, {}, "sort"),
        ({"query": MATCH}, {"sort": "year:desc"}, "sort"),
        ({"query": MATCH}, {"sort": "_score:asc"}, "sort"),
        ({"query": MATCH, "search_after": [1.0, "x"]}, {}, "search_after"),
        ({"query": MATCH}, {"scroll": "1m"}, "scroll"),
        ({"query": MATCH, "pit": {"id": "abc", "keep_alive": "1m"}}, {}, "pit"),
        ({"query": MATCH, "collapse": {"field": "isbn"}}, {}, "collapse"),
        ({"query": MATCH, "rescore": {"window_size": 50, "query": {}}}, {}, "rescore"),
        ({"query": MATCH, "knn": {"field": "v", "query_vector": [1.0], "k": 5}}, {}, "knn"),
        ({"retriever": {"standard": {"query": MATCH}}}, {}, "retriever"),
        ({"query": MATCH, "size": 0}, {}, "size_zero"),
        ({"query": MATCH}, {"size": "0"}, "size_zero"),
        ({"query": MATCH, "from": 95, "size": 10}, {}, "window_exceeded"),
        ({"query": MATCH, "size": 101}, {}, "window_exceeded"),
        ({"query": MATCH}, {"from": "91"}, "window_exceeded"),
        ({"query": MATCH, "profile": True}, {}, "profile"),
        ({"query": MATCH}, {"filter_path": "hits.hits._id"}, "filter_path"),
        ({"query": MATCH, "explain": True}, {}, "explain"),
        ({"query": MATCH}, {"explain": "true"}, "explain"),
        ({"query": MATCH}, {"explain": ""}, "explain"),
        ({"query": {"match_all": {}}}, {}, "no_query_text"),
        ({"query": {"bool": {"filter": [MATCH]}}}, {}, "no_query_text"),
        ({}, {}, "no_query_text"),
        ({"query": MATCH}, {"stored_fields": "_none_"}, "unsupported_param"),
        ({"query": MATCH}, {"terminate_after": "10"}, "unsupported_param"),
        ({"query": MATCH}, {"format": "yaml"}, "unsupported_param"),
        ({"query": MATCH}, {"source": "{}", "source_content_type": "application/json"}, "unsupported_param"),
        ({"query": MATCH}, {"made_up": "1"}, "unsupported_param"),
        ({"query": MATCH, "stored_fields": ["_none_"]}, {}, "unsupported_body_key"),
        ({"query": MATCH, "ext": {"x": 1}}, {}, "unsupported_body_key"),
        ({"query": MATCH, "slice": {"id": 0, "max": 2}}, {}, "unsupported_body_key"),
        ({"query": MATCH, "terminate_after": 10}, {}, "unsupported_body_key"),
        ({"query": MATCH, "made_up": 1}, {}, "unsupported_body_key"),
        ({"query": MATCH, "fields": "title"}, {}, "unsupported_body_key"),
        ({"query": MATCH, "size": -1}, {}, "invalid_paging"),
        ({"query": MATCH, "from": -5}, {}, "invalid_paging"),
        ({"query": MATCH, "size": 2.5}, {}, "invalid_paging"),
        ({"query": MATCH, "size": True}, {}, "invalid_paging"),
        ({"query": MATCH, "size": None}, {}, "invalid_paging"),
        ({"query": MATCH, "from": "x"}, {}, "invalid_paging"),
        ({"query": MATCH}, {"size": "ten"}, "invalid_paging"),
        ({"query": MATCH}, {"size": "-1"}, "invalid_paging"),
        ({"query": MATCH}, {"from": "1e3"}, "invalid_paging"),
        ({"query": MATCH}, {"size": ""}, "invalid_paging"),
    ],
)
def test_plan_search_bypass_reasons(body: object, params: dict[str, str], reason: str) -> None:
    assert plan(body, params) == Bypass(reason)


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"text"', b"null", b"42", b"{}{}", b"\xff\xfe"])
def test_body_that_is_not_one_json_object_is_invalid_json(raw: bytes) -> None:
    assert plan(raw=raw) == Bypass("invalid_json")


def test_index_outside_the_configured_globs_is_not_planned() -> None:
    rerank = RerankConfig(indices=("library-*",))
    assert plan(indices=("catalogue",), rerank=rerank) == Bypass("index_not_configured")
    assert plan(indices=(), rerank=rerank) == Bypass("index_not_configured")
    assert isinstance(plan(indices=("library-1",), rerank=rerank), SearchPlan)


@pytest.mark.parametrize(
    ("extra", "params"),
    [
        ({"sort": ["_score"]}, {}),
        ({"sort": "_score"}, {}),
        ({"sort": {"_score": "desc"}}, {}),
        ({"sort": [{"_score": {"order": "desc"}}]}, {}),
        ({}, {"sort": "_score"}),
        ({}, {"sort": "_score:desc"}),
        ({"explain": False, "profile": False}, {"explain": "false"}),
        (
            {
                "highlight": {"fields": {"title": {}}},
                "aggs": {"y": {"terms": {"field": "year"}}},
                "aggregations": {},
                "post_filter": {"term": {"a": 1}},
                "min_score": 0.5,
                "track_total_hits": True,
                "track_scores": True,
                "timeout": "1s",
                "suggest": {},
                "stats": ["g"],
                "version": True,
                "seq_no_primary_term": True,
                "indices_boost": [{"library": 2}],
                "runtime_mappings": {},
                "script_fields": {},
                "docvalue_fields": ["year"],
                "fields": ["title"],
                "_source": True,
            },
            {},
        ),
        (
            {},
            {
                "df": "title",
                "default_operator": "AND",
                "analyzer": "standard",
                "analyze_wildcard": "true",
                "lenient": "true",
                "track_total_hits": "true",
                "track_scores": "true",
                "timeout": "1s",
                "allow_no_indices": "true",
                "expand_wildcards": "open",
                "ignore_unavailable": "true",
                "ignore_throttled": "false",
                "preference": "_local",
                "routing": "r",
                "request_cache": "true",
                "search_type": "dfs_query_then_fetch",
                "typed_keys": "true",
                "rest_total_hits_as_int": "true",
                "batched_reduce_size": "5",
                "max_concurrent_shard_requests": "5",
                "pre_filter_shard_size": "1",
                "ccs_minimize_roundtrips": "false",
                "allow_partial_search_results": "false",
                "seq_no_primary_term": "true",
                "version": "true",
                "error_trace": "true",
                "human": "true",
                "stats": "g",
                "include_named_queries_score": "true",
                "docvalue_fields": "year",
            },
        ),
    ],
)
def test_requests_we_can_keep_exact_are_planned(extra: dict[str, object], params: dict[str, str]) -> None:
    result = ok(plan({"query": MATCH, **extra}, params))
    assert result.query_text == "deep learning"


# --- plan_search: query text and paging -------------------------------------------------------------


def test_header_query_wins_over_the_body() -> None:
    assert ok(plan(header_query="  what the user typed ")).query_text == "what the user typed"
    assert ok(plan(header_query="   ")).query_text == "deep learning"
    assert ok(plan({"query": {"match_all": {}}}, header_query="typed")).query_text == "typed"


def test_q_param_with_an_empty_body_is_planned() -> None:
    result = ok(plan(raw=b"", params={"q": "title:deep AND learning", "size": "5"}))
    assert (result.query_text, result.client_size) == ("deep learning", 5)
    assert result.recall_params == {"q": "title:deep AND learning", "size": "100"}
    assert recall(result) == {}


def test_q_param_replaces_the_body_query_as_in_elasticsearch() -> None:
    assert ok(plan({"query": MATCH}, {"q": "title:other words"})).query_text == "other words"


def test_configured_query_text_paths_are_used() -> None:
    rerank = RerankConfig(query_text_paths=("query.bool.should.1.match.abstract",))
    body = {"query": {"bool": {"should": [MATCH, {"match": {"abstract": "path text"}}]}}}
    assert ok(plan(body, rerank=rerank)).query_text == "path text"


@pytest.mark.parametrize(
    ("body", "params", "paging", "recall_body", "recall_params"),
    [
        ({"query": MATCH}, {}, (0, 10), {"query": MATCH, "size": 100}, {}),
        (
            {"from": 20, "query": MATCH, "size": 10},
            {},
            (20, 10),
            {"from": 0, "query": MATCH, "size": 100},
            {},
        ),
        ({"size": 5, "query": MATCH}, {}, (0, 5), {"size": 100, "query": MATCH}, {}),
        ({"query": MATCH, "from": 10}, {}, (10, 10), {"query": MATCH, "from": 0, "size": 100}, {}),
        ({"query": MATCH}, {"from": "20", "size": "20"}, (20, 20), {"query": MATCH}, {"size": "100"}),
        (
            {"query": MATCH},
            {"size": "3", "routing": "r"},
            (0, 3),
            {"query": MATCH},
            {"size": "100", "routing": "r"},
        ),
        ({"query": MATCH}, {"from": "30"}, (30, 10), {"query": MATCH, "size": 100}, {}),
        ({"query": MATCH, "size": 5}, {"size": "7"}, (0, 7), {"query": MATCH, "size": 100}, {"size": "100"}),
        ({"query": MATCH, "from": 50}, {"from": "1"}, (1, 10), {"query": MATCH, "from": 0, "size": 100}, {}),
        (
            {"query": MATCH, "size": 1000},
            {"size": "10"},
            (0, 10),
            {"query": MATCH, "size": 100},
            {"size": "100"},
        ),
        ({"query": MATCH, "size": "20"}, {}, (0, 20), {"query": MATCH, "size": 100}, {}),
        (
            {"query": MATCH, "from": 90, "size": 10},
            {},
            (90, 10),
            {"query": MATCH, "from": 0, "size": 100},
            {},
        ),
    ],
)
def test_recall_rewrite_asks_for_the_window_from_zero(
    body: dict[str, object],
    params: dict[str, str],
    paging: tuple[int, int],
    recall_body: dict[str, object],
    recall_params: dict[str, str],
) -> None:
    result = ok(plan(body, params))
    assert (result.client_from, result.client_size) == paging
    got = recall(result)
    assert got == recall_body
    assert list(got) == list(recall_body)  # the client's key order, size appended at the end
    assert result.recall_params == recall_params
    assert result.added_fields == ()


def test_recall_keeps_everything_else_byte_for_byte_equal() -> None:
    body = {
        "query": {"bool": {"must": [MATCH], "filter": [{"range": {"year": {"gte": 2000}}}]}},
        "aggs": {"by_year": {"terms": {"field": "year", "size": 3}}},
        "highlight": {"fields": {"title": {}}},
        "size": 20,
        "track_total_hits": 5000,
    }
    got = recall(plan(body))
    assert got == {**body, "size": 100}
    assert list(got) == list(body)


DECIDING = {
    "query": MATCH,
    "post_filter": {"term": {"open_access": True}},
    "min_score": 0.5,
    "indices_boost": [{"library": 2}],
    "runtime_mappings": {"y": {"type": "long"}},
    "timeout": "2s",
}
SHADOW_FIELDS = {"_source": False, "fields": ["title", "abstract", "published", "citations"]}


@pytest.mark.parametrize(
    ("body", "params", "shadow_body", "shadow_params"),
    [
        pytest.param(
            {**DECIDING, "from": 10, "size": 10},
            {"routing": "a", "preference": "_local"},
            {**DECIDING, "from": 0, "size": 100, **SHADOW_FIELDS, "track_total_hits": False},
            {"routing": "a", "preference": "_local"},
            id="what decides the hits and their order is kept",
        ),
        pytest.param(
            {
                "query": MATCH,
                "_source": ["title"],
                "fields": ["isbn"],
                "docvalue_fields": ["year"],
                "script_fields": {"s": {"script": "1"}},
                "highlight": {"fields": {"title": {}}},
                "aggs": {"by_year": {"terms": {"field": "year"}}},
                "aggregations": {"n": {"value_count": {"field": "year"}}},
                "suggest": {"s": {"text": "x", "term": {"field": "title"}}},
                "track_total_hits": 5000,
                "version": True,
                "seq_no_primary_term": True,
                "stats": ["group"],
            },
            {},
            {"query": MATCH, "size": 100, **SHADOW_FIELDS, "track_total_hits": False},
            {},
            id="what only shapes the answer is dropped",
        ),
        pytest.param(
            {"query": MATCH},
            {
                "size": "10",
                "q": "title:deep",
                "_source_includes": "title",
                "track_total_hits": "true",
                "typed_keys": "true",
                "rest_total_hits_as_int": "true",
            },
            {"query": MATCH, **SHADOW_FIELDS, "track_total_hits": False},
            {"size": "100", "q": "title:deep"},
            id="URL params likewise; the window's size stays where the client put it",
        ),
    ],
)
def test_shadow_recall_asks_only_for_what_decides_the_order(
    body: dict[str, object],
    params: dict[str, str],
    shadow_body: dict[str, object],
    shadow_params: dict[str, str],
) -> None:
    live = ok(plan(body, params))
    shadow = shadow_plan(live, NEEDED)
    assert orjson.loads(shadow.recall_body) == shadow_body
    assert shadow.recall_params == shadow_params
    assert (shadow.query_text, shadow.client_from, shadow.client_size) == (
        live.query_text,
        live.client_from,
        live.client_size,
    )


# --- plan_search: fields the pipeline needs ---------------------------------------------------------

ALL_NEEDED = ("title", "abstract", "published", "citations")


@pytest.mark.parametrize(
    ("extra", "params", "added"),
    [
        ({}, {}, ()),
        ({"_source": True}, {}, ()),
        ({"_source": False}, {}, ALL_NEEDED),
        ({"_source": "title"}, {}, ("abstract", "published", "citations")),
        ({"_source": ["title", "abstract"]}, {}, ("published", "citations")),
        ({"_source": ["t*", "a*", "p*", "c*"]}, {}, ()),
        (
            {"_source": {"includes": ["t*"], "excludes": ["abstract"]}},
            {},
            ("abstract", "published", "citations"),
        ),
        ({"_source": {"excludes": ["citations"]}}, {}, ("citations",)),
        ({"_source": {"excludes": "cit*"}}, {}, ("citations",)),
        ({"_source": {"include": "*", "exclude": []}}, {}, ()),
        ({"_source": {"includes": ["title"], "unknown": 1}}, {}, ALL_NEEDED),
        ({"_source": 3}, {}, ALL_NEEDED),
        ({}, {"_source": "false"}, ALL_NEEDED),
        ({"_source": False}, {"_source": "true"}, ()),
        ({}, {"_source": "title,published"}, ("abstract", "citations")),
        ({}, {"_source_includes": "title"}, ("abstract", "published", "citations")),
        ({}, {"_source_excludes": "abstract"}, ("abstract",)),
        ({"_source": ["title"]}, {"_source_excludes": "x"}, ()),
        ({"_source": False, "fields": ["published"]}, {}, ("title", "abstract", "citations")),
        ({"_source": False, "fields": ["*"]}, {}, ()),
        (
            {"_source": False, "fields": [{"field": "pub*", "format": "yyyy"}]},
            {},
            ("title", "abstract", "citations"),
        ),
        ({"_source": False, "docvalue_fields": ["citations"]}, {}, ("title", "abstract", "published")),
        ({"_source": False}, {"docvalue_fields": "citations,published"}, ("title", "abstract")),
        (
            {"_source": False, "script_fields": {"title": {"script": "1"}}},
            {},
            ("abstract", "published", "citations"),
        ),
    ],
)
def test_needed_fields_hidden_by_source_are_added_to_fields(
    extra: dict[str, object], params: dict[str, str], added: tuple[str, ...]
) -> None:
    result = ok(plan({"query": MATCH, **extra}, params))
    assert result.added_fields == added
    body = recall(result)
    client_fields = extra.get("fields")
    if added:
        assert body["fields"] == [*(client_fields if isinstance(client_fields, list) else []), *added]
    else:
        assert body.get("fields") == client_fields
    assert body.get("_source", "absent") == extra.get(
        "_source", "absent"
    )  # `_source` itself is never changed


def test_added_fields_go_last_and_a_client_fields_list_keeps_its_place() -> None:
    body = recall(plan({"fields": ["x"], "_source": False, "query": MATCH}))
    assert list(body) == ["fields", "_source", "query", "size"]
    assert body["fields"] == ["x", *ALL_NEEDED]
    body = recall(plan({"_source": False, "query": MATCH}))
    assert list(body) == ["_source", "query", "fields", "size"]


@pytest.mark.parametrize(
    ("source", "field", "added"),
    [
        (["meta"], "meta.title", False),
        (["meta.*"], "meta.title", False),
        (["meta.title"], "meta", True),
        ({"includes": ["meta"], "excludes": ["meta.title"]}, "meta.title", True),
        ({"includes": ["meta"], "excludes": ["meta.title.zh"]}, "meta.title", True),
        ({"excludes": ["meta.other"]}, "meta.title", False),
    ],
)
def test_dotted_needed_fields_and_source_paths(source: object, field: str, added: bool) -> None:
    needed = NeededFields(text_fields=(field,), date_field="", citations_field="")
    result = ok(plan({"query": MATCH, "_source": source}, needed=needed))
    assert result.added_fields == ((field,) if added else ())


def test_fields_not_needed_are_never_added() -> None:
    needed = NeededFields(text_fields=("title", "title"), date_field="", citations_field="")
    assert ok(plan({"query": MATCH, "_source": False}, needed=needed)).added_fields == ("title",)
