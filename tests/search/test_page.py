"""search.page: reading hits, the text the model reads, and cutting the client's page."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.config import config_from_dict
from es_rerank_proxy.search.page import (
    HitData,
    build_page,
    document_text,
    feature_columns,
    hit_data,
    model_text,
)
from es_rerank_proxy.search.plan import NeededFields, SearchPlan

NEEDED = NeededFields(text_fields=("title", "abstract"), date_field="published", citations_field="citations")

# --- hit_data and document_text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hit", "expected"),
    [
        (
            {
                "_source": {
                    "title": "Deep  learning",
                    "abstract": "About\nnets",
                    "published": "2020-01-01",
                    "citations": 12,
                }
            },
            HitData(
                texts=(("title", "Deep learning"), ("abstract", "About nets")),
                date="2020-01-01",
                citations=12,
            ),
        ),
        (
            {
                "_source": {"title": ["Part one", "Part two"], "abstract": ""},
                "fields": {"published": ["2021"]},
            },
            HitData(texts=(("title", "Part one Part two"),), date=["2021"], citations=None),
        ),
        (
            {"fields": {"title": ["机器学习"], "abstract": ["深度 学习"], "citations": [3]}},
            HitData(texts=(("title", "机器学习"), ("abstract", "深度 学习")), date=None, citations=[3]),
        ),
        ({}, HitData(texts=(), date=None, citations=None)),
        ({"_source": None, "fields": None}, HitData(texts=(), date=None, citations=None)),
        (
            {"_source": {"title": 42, "abstract": {"x": "y"}}, "fields": {"title": ["from fields"]}},
            HitData(texts=(), date=None, citations=None),
        ),
    ],
)
def test_hit_data_reads_source_then_fields(hit: dict[str, object], expected: HitData) -> None:
    assert hit_data(hit, NEEDED) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"meta": {"title": "nested"}}, "nested"),
        ({"meta.title": "literal dotted key"}, "literal dotted key"),
        ({"meta": {"title.zh": "x", "title": "inner"}}, "inner"),
        ({"meta": [{"title": "a"}, {"title": "b"}, {"other": 1}]}, "a b"),
        ({"meta": [{"title": ["a", "b"]}, {"title": "c"}]}, "a b c"),
        ({"meta": "not an object"}, ""),
    ],
)
def test_hit_data_follows_dotted_paths_into_source(source: dict[str, object], expected: str) -> None:
    needed = NeededFields(text_fields=("meta.title",), date_field="", citations_field="")
    data = hit_data({"_source": source}, needed)
    assert data.texts == ((("meta.title", expected),) if expected else ())


def test_document_text_labels_and_joins_fields() -> None:
    data = HitData(
        texts=(("title", "Deep learning"), ("abstract_en", "About nets"), ("meta.sub_title", "x")),
        date=None,
        citations=None,
    )
    assert document_text(data, 2000) == "Title: Deep learning\nAbstract en: About nets\nMeta sub title: x"
    assert document_text(data, 12) == "Title: Deep "
    assert document_text(data, 0) == ""
    assert document_text(HitData(texts=(), date=None, citations=None), 100) == ""


def test_plain_document_text_is_the_values_alone() -> None:
    data = HitData(texts=(("title", "Deep learning"), ("abstract", "About nets")), date=None, citations=None)
    assert document_text(data, 2000, labelled=False) == "Deep learning About nets"
    assert document_text(data, 15, labelled=False) == "Deep learning A"
    pair = HitData(texts=(("t", "ab\ud83d\ude00"),), date=None, citations=None)
    assert document_text(pair, 3, labelled=False) == "ab"


def test_document_text_cuts_by_code_point_and_leaves_no_lone_surrogate() -> None:
    chinese = HitData(texts=(("标题", "机器学习与深度学习"),), date=None, citations=None)
    assert document_text(chinese, 9) == "标题: 机器学习与"
    assert document_text(chinese, 9).encode("utf-8").decode("utf-8") == "标题: 机器学习与"
    emoji = HitData(texts=(("t", "ab😀"),), date=None, citations=None)
    assert document_text(emoji, 6) == "T: ab😀"
    pair = HitData(texts=(("t", "ab\ud83d\ude00"),), date=None, citations=None)  # a UTF-16 pair, as str
    assert document_text(pair, 6) == "T: ab"


# --- build_page -------------------------------------------------------------------------------------


def es_response(n: int, *, fields: bool = False, max_score: float | None = 9.0) -> dict[str, object]:
    hits = []
    for i in range(n):
        hit: dict[str, object] = {"_index": "library", "_id": f"d{i}", "_score": 9.0 - i * 0.01}
        hit["_source"] = {"title": f"t{i}"}
        if fields:
            hit["fields"] = {"published": [f"20{i:02d}"], "kept": [i]} if i % 2 else {"published": ["x"]}
        hit["highlight"] = {"title": [f"<em>t{i}</em>"]}
        hits.append(hit)
    return {
        "took": 7,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": 1234, "relation": "eq"}, "max_score": max_score, "hits": hits},
        "aggregations": {"by_year": {"buckets": [{"key": 2020, "doc_count": 3}]}},
        "suggest": {"s": [{"text": "x", "options": []}]},
    }


def page_plan(client_from: int, client_size: int, added: tuple[str, ...] = ()) -> SearchPlan:
    return SearchPlan(
        query_text="q",
        client_from=client_from,
        client_size=client_size,
        recall_body=b"{}",
        recall_params={},
        added_fields=added,
    )


def page_hits(page: dict[str, object]) -> list[dict[str, object]]:
    hits = page["hits"]
    assert isinstance(hits, dict)
    inner = hits["hits"]
    assert isinstance(inner, list)
    return inner


def test_pages_one_two_three_concatenated_equal_one_big_page() -> None:
    response = es_response(40)
    order = list(reversed(range(40)))
    scores = [100.0 - i for i in range(40)]
    pages = [page_hits(build_page(response, order, scores, page_plan(f, 10), None)) for f in (0, 10, 20)]
    big = page_hits(build_page(response, order, scores, page_plan(0, 30), None))
    assert [h["_id"] for h in pages[0] + pages[1] + pages[2]] == [h["_id"] for h in big]
    assert pages[0] + pages[1] + pages[2] == big
    assert [h["_id"] for h in big[:3]] == ["d39", "d38", "d37"]
    assert [h["_score"] for h in pages[1][:2]] == [90.0, 89.0]  # scores by position in the full order


def test_page_replaces_score_and_keeps_every_other_section() -> None:
    response = es_response(5)
    before = copy.deepcopy(response)
    page = build_page(response, [2, 0, 1, 4, 3], [5.0, 4.0, 3.0, 2.0, 1.0], page_plan(0, 3), None)
    assert response == before  # the input is not modified
    assert list(page) == list(response)
    for key in ("took", "timed_out", "_shards", "aggregations", "suggest"):
        assert page[key] == response[key]
    hits = page["hits"]
    assert isinstance(hits, dict)
    assert hits["total"] == {"value": 1234, "relation": "eq"}
    assert hits["max_score"] == 5.0
    assert list(hits) == ["total", "max_score", "hits"]
    first = page_hits(page)[0]
    assert first == {**page_hits(response)[2], "_score": 5.0}
    assert list(first) == ["_index", "_id", "_score", "_source", "highlight"]


def test_page_beyond_the_hits_is_empty_and_max_score_stays_the_top() -> None:
    page = build_page(es_response(3), [1, 0, 2], [3.0, 2.0, 1.0], page_plan(10, 10), None)
    assert page_hits(page) == []
    hits = page["hits"]
    assert isinstance(hits, dict) and hits["max_score"] == 3.0


def test_null_max_score_stays_null_and_no_hits_keep_the_original() -> None:
    page = build_page(es_response(3, max_score=None), [0, 1, 2], [3.0, 2.0, 1.0], page_plan(0, 10), None)
    hits = page["hits"]
    assert isinstance(hits, dict) and hits["max_score"] is None
    assert [h["_score"] for h in page_hits(page)] == [3.0, 2.0, 1.0]
    empty = es_response(0, max_score=None)
    assert build_page(empty, [], [], page_plan(0, 10), None) == empty


def test_added_fields_are_stripped_and_an_emptied_fields_key_removed() -> None:
    response = es_response(4, fields=True)
    page = build_page(response, [0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0], page_plan(0, 4, ("published",)), None)
    hits = page_hits(page)
    assert "fields" not in hits[0]
    assert hits[1]["fields"] == {"kept": [1]}
    assert list(hits[1]) == ["_index", "_id", "_score", "_source", "fields", "highlight"]
    untouched = build_page(response, [0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0], page_plan(0, 4), None)
    assert page_hits(untouched)[1]["fields"] == {"published": ["2001"], "kept": [1]}
    assert page_hits(response)[1]["fields"] == {"published": ["2001"], "kept": [1]}


def test_explanations_are_appended_by_window_index() -> None:
    explanations = [{"es_rank": i, "final": 1.0 - i / 10} for i in range(3)]
    page = build_page(es_response(3), [2, 0, 1], [3.0, 2.0, 1.0], page_plan(1, 2), explanations)
    hits = page_hits(page)
    assert [h["_rerank"] for h in hits] == [explanations[0], explanations[1]]
    assert list(hits[0])[-1] == "_rerank"


@pytest.mark.parametrize(
    "response", [{}, {"hits": None}, {"hits": {"total": 0}}, {"hits": {"hits": "x"}}, {"hits": {"hits": [1]}}]
)
def test_response_without_a_hits_list_raises(response: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_page(response, [0], [1.0], page_plan(0, 10), None)


@st.composite
def orders(draw: st.DrawFn) -> tuple[int, list[int], int, int]:
    n = draw(st.integers(min_value=0, max_value=60))
    order = draw(st.permutations(list(range(n))))
    client_from = draw(st.integers(min_value=0, max_value=70))
    client_size = draw(st.integers(min_value=1, max_value=30))
    return n, list(order), client_from, client_size


@given(orders())
def test_build_page_returns_exactly_the_slice_of_the_new_order(case: tuple[int, list[int], int, int]) -> None:
    n, order, client_from, client_size = case
    response = es_response(n, fields=True)
    before = copy.deepcopy(response)
    scores = [float(n - position) for position in range(n)]
    page = build_page(response, order, scores, page_plan(client_from, client_size), None)
    window = page_hits(response)
    expected = [window[i]["_id"] for i in order][client_from : client_from + client_size]
    got = page_hits(page)
    assert [h["_id"] for h in got] == expected
    assert [h["_score"] for h in got] == scores[client_from : client_from + client_size]
    for hit in got:
        original = next(h for h in window if h["_id"] == hit["_id"])
        assert {k: v for k, v in hit.items() if k != "_score"} == {
            k: v for k, v in original.items() if k != "_score"
        }
    assert response == before
    assert {k: v for k, v in page.items() if k != "hits"} == {
        k: v for k, v in response.items() if k != "hits"
    }
    hits = page["hits"]
    assert isinstance(hits, dict) and hits["total"] == {"value": 1234, "relation": "eq"}


# --- feature_columns: what the blend reads of the whole window ---------------------------------------


@pytest.mark.parametrize(
    ("score", "expected"),
    [(12.5, 12.5), (3, 3.0), (0, 0.0), (None, None), (True, None), ("7.5", None), ([1.0], None)],
)
def test_feature_columns_take_only_numeric_scores(score: object, expected: float | None) -> None:
    columns = feature_columns([{"_score": score, "_source": {}}, {"_source": {}}], NEEDED)
    assert columns.es_scores == [expected, None]


@pytest.mark.parametrize(
    ("needed", "expected_dates", "expected_citations"),
    [
        (NEEDED, ["2020-01-01", ["2021"], "2019", None], [12, None, [3], None]),
        (NeededFields((), "", ""), [None] * 4, [None] * 4),
        (
            NeededFields((), "meta.published", "meta.cited"),
            [None, None, "1999-09-09", None],
            [None] * 3 + [7],
        ),
    ],
)
def test_feature_columns_read_source_then_fields_for_every_hit(
    needed: NeededFields, expected_dates: list[object], expected_citations: list[object]
) -> None:
    hits: list[dict[str, object]] = [
        {"_source": {"published": "2020-01-01", "citations": 12}},
        {"_source": {"title": "x"}, "fields": {"published": ["2021"]}},
        {"_source": {"published": "2019", "meta": {"published": "1999-09-09"}}, "fields": {"citations": [3]}},
        {"_source": {"meta.cited": 7}},
    ]
    columns = feature_columns(hits, needed)
    assert columns.dates == expected_dates
    assert columns.citations == expected_citations


_values = st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2))
_hits = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "_score": st.one_of(st.none(), st.floats(), st.integers(), st.booleans()),
            "_source": st.one_of(
                st.none(),
                st.dictionaries(st.sampled_from(["published", "citations", "meta", "meta.cited"]), _values),
                st.just({"meta": {"published": "2001", "cited": 4}}),
            ),
            "fields": st.dictionaries(st.sampled_from(["published", "citations", "meta.cited"]), _values),
        },
    ),
    max_size=8,
)


@given(_hits, st.sampled_from([NEEDED, NeededFields((), "meta.published", "meta.cited")]))
def test_feature_columns_agree_with_hit_data(hits: list[dict[str, object]], needed: NeededFields) -> None:
    # The window's columns take a shortcut for top-level fields; each value must be hit_data's own.
    columns = feature_columns(hits, needed)
    assert columns.dates == [hit_data(hit, needed).date for hit in hits]
    assert columns.citations == [hit_data(hit, needed).citations for hit in hits]


# --- whitespace in the model's text ----------------------------------------------------------------

# Every character `str.isspace` knows (all lie below U+3001).
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("already clean text", "already clean text"),
        ("two  spaces", "two spaces"),
        (" leading", "leading"),
        ("trailing ", "trailing"),
        ("line\nbreak", "line break"),
        ("tab\tand\rreturn", "tab and return"),
        ("unit\x1fseparator", "unit separator"),
        ("form\x0cfeed\x0bvertical", "form feed vertical"),
        ("no\xa0break space", "no break space"),
        ("中文\u3000全角空格", "中文 全角空格"),
        ("clean 中文 text", "clean 中文 text"),
        ("zero\u200bwidth is no space", "zero\u200bwidth is no space"),
        (" \n\t ", ""),
        ("", ""),
    ],
)
def test_model_text_makes_each_whitespace_run_one_space(value: str, expected: str) -> None:
    data = hit_data({"_source": {"title": value}}, NEEDED)
    assert document_text(data, 2000, labelled=False) == expected


@pytest.mark.parametrize("space", list(_WHITESPACE))
def test_model_text_treats_every_whitespace_character_as_a_space(space: str) -> None:
    data = hit_data({"_source": {"title": f"clean{space}text"}}, NEEDED)
    assert document_text(data, 2000, labelled=False) == "clean text"


_ASCII_WHITESPACE = "".join(c for c in _WHITESPACE if c.isascii())


@given(
    st.text(alphabet=st.sampled_from(_ASCII_WHITESPACE + "ab."), max_size=40)
    | st.text(alphabet=st.sampled_from(_WHITESPACE + "ab.é机\u200b"), max_size=40)
    | st.text(max_size=40)
)
def test_model_text_whitespace_is_what_str_split_makes_of_it(value: str) -> None:
    # The shortcut for text that is clean already must agree with the plain split-and-join everywhere.
    data = hit_data({"_source": {"title": value}}, NEEDED)
    assert document_text(data, 2000, labelled=False) == " ".join(value.split())


# --- the model's text, cut before the end of a long field ---------------------------------------------

_spaced_text = st.text(alphabet=st.sampled_from("ab 机\n\t\u3000"), max_size=60)
_text_values = st.one_of(_spaced_text, st.lists(st.one_of(_spaced_text, st.lists(_spaced_text, max_size=3))))


@given(
    st.fixed_dictionaries({"title": _text_values, "abstract": _text_values}),
    st.integers(min_value=1, max_value=40),
    st.booleans(),
)
def test_text_read_up_to_the_cut_gives_the_same_document_text(
    source: dict[str, object], max_chars: int, labelled: bool
) -> None:
    hit = {"_source": source}
    full = document_text(hit_data(hit, NEEDED), max_chars, labelled=labelled)
    cut = document_text(hit_data(hit, NEEDED, text_chars=max_chars), max_chars, labelled=labelled)
    assert cut == full
    config = config_from_dict(
        {
            "reranker": {"document_format": "labelled" if labelled else "plain"},
            "rerank": {"text_fields": list(NEEDED.text_fields), "max_doc_chars": max_chars},
        }
    )
    assert model_text(hit, NEEDED, config) == full


@pytest.mark.parametrize(
    ("value", "expected_start"),
    [
        ("word  " * 100_000, "word word word"),
        (["first", "second  " * 100_000, "third"], "first second second"),
        (" \n " * 1000 + "late words", "late words"),
    ],
)
def test_long_text_is_normalised_only_up_to_the_cut(value: object, expected_start: str) -> None:
    needed = NeededFields(text_fields=("abstract",), date_field="", citations_field="")
    ((_, text),) = hit_data({"_source": {"abstract": value}}, needed, text_chars=12).texts
    assert text.startswith(expected_start)
    assert len(text) < 40  # not the whole field: a window's work does not grow with document length
