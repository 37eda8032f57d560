"""find_query_text: configured paths, the query DSL walk, and the `q` URL parameter."""

from __future__ import annotations

import pytest

from es_rerank_proxy.search.query_text import clean_lucene, find_query_text


def text_of(query: object, *, url_q: str | None = None, paths: tuple[str, ...] = ()) -> str | None:
    return find_query_text({"query": query}, url_q=url_q, paths=paths)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"match": {"title": "deep learning"}}, "deep learning"),
        ({"match": {"title": {"query": "deep learning", "operator": "and"}}}, "deep learning"),
        ({"match_phrase": {"title": "climate change"}}, "climate change"),
        ({"match_phrase": {"title": {"query": "climate change", "slop": 2}}}, "climate change"),
        ({"match_phrase_prefix": {"title": "quantum comp"}}, "quantum comp"),
        ({"match_bool_prefix": {"title": {"query": "quick brown f"}}}, "quick brown f"),
        ({"multi_match": {"query": "graph theory", "fields": ["title^2", "abstract"]}}, "graph theory"),
        (
            {"combined_fields": {"query": "protein folding", "fields": ["title", "abstract"]}},
            "protein folding",
        ),
        ({"query_string": {"query": 'title:"neural nets" AND year:2020'}}, "neural nets 2020"),
        (
            {"simple_query_string": {"query": '"fried eggs" +(eggplant | potato) -frittata'}},
            "fried eggs eggplant potato frittata",
        ),
        ({"match": {"title": "  extra   spaces  "}}, "extra spaces"),
    ],
)
def test_each_full_text_query_type_gives_its_text(query: object, expected: str) -> None:
    assert text_of(query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"bool": {"must": {"match": {"title": "a"}}}}, "a"),
        ({"bool": {"must": [{"match": {"title": "a"}}, {"match": {"abstract": "b"}}]}}, "a b"),
        ({"bool": {"should": [{"match": {"title": "a"}}, {"match_phrase": {"title": "b c"}}]}}, "a b c"),
        (
            {
                "bool": {
                    "must": {
                        "bool": {
                            "should": [{"match": {"t": "deep"}}, {"bool": {"must": {"match": {"t": "x"}}}}]
                        }
                    }
                }
            },
            "deep x",
        ),
        ({"bool": {"filter": {"match": {"status": "published"}}, "must": {"match": {"title": "a"}}}}, "a"),
        ({"bool": {"must_not": {"match": {"title": "bad"}}, "should": {"match": {"title": "good"}}}}, "good"),
        ({"bool": {"filter": [{"match": {"title": "only filter"}}]}}, None),
        ({"function_score": {"query": {"match": {"title": "fs"}}, "functions": []}}, "fs"),
        ({"script_score": {"query": {"match": {"title": "ss"}}, "script": {"source": "1"}}}, "ss"),
        ({"dis_max": {"queries": [{"match": {"title": "one"}}, {"match": {"abstract": "two"}}]}}, "one two"),
        (
            {
                "boosting": {
                    "positive": {"match": {"title": "pos"}},
                    "negative": {"match": {"title": "neg"}},
                    "negative_boost": 0.5,
                }
            },
            "pos",
        ),
        ({"constant_score": {"filter": {"match": {"title": "cs"}}}}, "cs"),
        ({"nested": {"path": "authors", "query": {"match": {"authors.name": "curie"}}}}, "curie"),
        ({"function_score": {"query": {"bool": {"must": [{"multi_match": {"query": "deep"}}]}}}}, "deep"),
    ],
)
def test_compound_queries_are_walked_but_filter_and_must_not_are_ignored(
    query: object, expected: str | None
) -> None:
    assert text_of(query) == expected


def test_several_texts_are_joined_once_in_document_order() -> None:
    query = {
        "bool": {
            "should": [
                {"match": {"title": "deep learning"}},
                {"match": {"abstract": "deep learning"}},
                {"match_phrase": {"title": "neural"}},
            ],
            "must": {"multi_match": {"query": "deep learning"}},
        }
    }
    assert text_of(query) == "deep learning neural"


@pytest.mark.parametrize(
    "query",
    [
        {"match_all": {}},
        {"term": {"status": "published"}},
        {"range": {"year": {"gte": 2000}}},
        {"bool": {"filter": [{"term": {"a": "b"}}, {"range": {"year": {"gte": 2000}}}]}},
        {"match": {"title": ""}},
        {"match": {"year": 2020}},
        {"exists": {"field": "title"}},
        {"boosting": {"negative": {"match": {"title": "x"}}}},
        "not an object",
        None,
    ],
)
def test_queries_without_text_give_none(query: object) -> None:
    assert text_of(query) is None


def test_no_body_and_no_q_gives_none() -> None:
    assert find_query_text(None, url_q=None, paths=()) is None
    assert find_query_text({}, url_q=None, paths=()) is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"match": {"title": "机器学习"}}, "机器学习"),
        ({"match": {"title": {"query": "深度学习 在 图书馆 中的应用"}}}, "深度学习 在 图书馆 中的应用"),
        ({"multi_match": {"query": "量子计算　入门"}}, "量子计算 入门"),  # ideographic space
        ({"query_string": {"query": '标题:机器学习 AND 作者:"李 明"'}}, "机器学习 李 明"),
        (
            {"bool": {"must": [{"match": {"title": "机器学习"}}, {"match": {"title": "deep learning"}}]}},
            "机器学习 deep learning",
        ),
        ({"match": {"title": "Ünïcödé café naïve"}}, "Ünïcödé café naïve"),
    ],
)
def test_chinese_and_other_non_ascii_text_is_kept_whole(query: object, expected: str) -> None:
    assert text_of(query) == expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("deep learning", "deep learning"),
        ("title:deep AND abstract:learning", "deep learning"),
        ('title:"deep learning" OR abstract:(neural networks)', "deep learning neural networks"),
        ("+deep -shallow NOT broken", "deep shallow broken"),
        ("deep^2 learning^0.5", "deep learning"),
        ('"deep learning"~3 netwrk~1', "deep learning netwrk"),
        ("comput* wom?n", "comput womn"),
        ("year:[2000 TO 2010] quantum", "quantum"),
        ("year:{* TO 2010} quantum", "quantum"),
        ("deep && learning || ai ! legacy", "deep learning ai legacy"),
        ("title:/joh?n(ath[oa]n)/ smith", "smith"),
        (r"c\+\+ programming", "c++ programming"),
        (r"ratio\:2 x", "ratio:2 x"),
        ("((nested) (groups))", "nested groups"),
        ("*:*", None),
        ("title:", None),
        ("AND OR NOT", None),
        ("", None),
        ("标题:机器学习 AND 深度", "机器学习 深度"),
        ('"unterminated phrase', "unterminated phrase"),
    ],
)
def test_lucene_syntax_is_cleaned_to_words(q: str, expected: str | None) -> None:
    assert clean_lucene(q) == expected
    assert find_query_text(None, url_q=q, paths=()) == expected


def test_url_q_is_used_only_when_the_body_has_no_text() -> None:
    assert find_query_text({"query": {"match": {"t": "body"}}}, url_q="url", paths=()) == "body"
    assert find_query_text({"query": {"match_all": {}}}, url_q="title:url", paths=()) == "url"
    assert find_query_text({"size": 5}, url_q="url", paths=()) == "url"


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (("query.bool.must.0.match.title.query",), "from path"),
        (("ext.user_query",), "the user's words"),
        (("missing.path", "ext.user_query"), "the user's words"),
        (("ext.empty", "ext.user_query"), "the user's words"),
        (("ext.number", "query.bool.must.5.x", "query.bool.must.x"), "from path other"),
        (("query.bool.must",), "from path other"),  # not a string: falls through to the walk
        (("query.bool.must.0.match.title",), "from path other"),
    ],
)
def test_configured_paths_win_in_order_then_the_walk(paths: tuple[str, ...], expected: str) -> None:
    body = {
        "query": {
            "bool": {"must": [{"match": {"title": {"query": "from path"}}}, {"match": {"t": "other"}}]}
        },
        "ext": {"user_query": "the user's words", "empty": "  ", "number": 3},
    }
    assert find_query_text(body, url_q="ignored", paths=paths) == expected
