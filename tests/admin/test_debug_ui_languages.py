"""The debug page in English and Chinese (Simplified): one table of labels, the browser's language by default,
a switch whose choice is remembered, and no label left in the other language (checked in Chromium).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

import pytest

from ..conftest import INDEX
from .browser import ARTIFACTS, chromium
from .test_debug_ui import ProxyFactory

if TYPE_CHECKING:
    from playwright.sync_api import Page

STATIC = resources.files("es_rerank_proxy.admin").joinpath("static")
CJK = re.compile(r"[\u3400-\u9fff\u3000-\u303f\uff00-\uffef]")
# Names that stay as they are in Chinese: products, a protocol, a ranking function, an abbreviation.
NAMES = {"Elasticsearch", "ES", "BM25", "HTTP"}
WEIGHTS = {"rerank": 0.7, "bm25": 0.2, "recency": 0.05, "citations": 0.05}
# Every label text and label attribute on the page, leaving out data (hit titles, ids, index names,
# the server's reason codes) which carry `data-raw`, and the brand name in the document title.
LABELS_JS = """() => {
  const raw = (node) => node.closest && node.closest("[data-raw]");
  const texts = [document.title.replace("es-rerank-proxy", "")];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || raw(parent) || ["SCRIPT", "STYLE"].includes(parent.tagName)) continue;
    if (node.textContent.trim()) texts.push(node.textContent.trim());
  }
  for (const el of document.querySelectorAll("[title], [placeholder], [aria-label]")) {
    if (raw(el)) continue;
    for (const name of ["title", "placeholder", "aria-label"]) {
      if (el.getAttribute(name)) texts.push(el.getAttribute(name));
    }
  }
  return texts;
}"""


def _table() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(STATIC.joinpath("i18n.json").read_text(encoding="utf-8"))
    return table


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


# --- the table of labels ----------------------------------------------------------------------------------


def test_every_language_has_every_label_with_the_same_placeholders() -> None:
    table = _table()
    assert set(table["languages"]) == {"en", "zh"}
    english, chinese = table["en"], table["zh"]
    assert set(english) == set(chinese)
    for key in english:
        assert english[key].strip() and chinese[key].strip(), key
        assert _placeholders(english[key]) == _placeholders(chinese[key]), key
        assert CJK.search(chinese[key]) or chinese[key] in NAMES, f"{key}: {chinese[key]!r} is not Chinese"
        assert not CJK.search(english[key]), key


def test_every_label_the_page_uses_is_in_the_table() -> None:
    html = STATIC.joinpath("ui.html").read_text(encoding="utf-8")
    script = STATIC.joinpath("ui.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-[\w-]+)?="([\w.]+)"', html))
    used |= set(re.findall(r'\b(?:t|tNodes|showError)\("([\w.]+\w)"', script))
    used |= set(re.findall(r'"((?:error|component)\.[\w.]+\w)"', script))  # [key, params], SHORT
    # Built from a prefix and a name: `t("component." + name)` and the like.
    used |= {f"component.{name}" for name in ("rerank", "bm25", "recency", "citations", "prior", "final")}
    used |= {f"outcome.{name}" for name in ("applied", "degraded", "skipped")}
    used |= {f"timing.{name}" for name in ("es", "rerank", "total")}
    assert len(used) > 40
    keys = set(_table()["en"])
    assert used - keys == set(), "labels the page asks for"
    assert keys - used == set(), "labels nothing uses"


# --- in Chromium --------------------------------------------------------------------------------------------


def _open(page: Page, url: str) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(url + f"/_rerank/ui?index={INDEX}&q=neural+search")
    page.wait_for_selector("body[data-state=done]")
    page.wait_for_selector("#columns:not(.busy)")
    return errors


def _english_words(texts: list[str]) -> set[str]:
    return {word for text in texts for word in re.findall(r"[A-Za-z][A-Za-z0-9_]+", text)} - NAMES


@pytest.mark.slow
@pytest.mark.parametrize(
    ("browser_languages", "expected"),
    [("en-US", "en"), ("zh-CN", "zh"), ("zh-TW", "zh"), ("fr-FR", "en")],
    ids=["english", "chinese", "chinese-taiwan", "other-falls-back-to-english"],
)
def test_browser_language_picks_the_page_language_and_every_label_follows(
    reranking_proxy: ProxyFactory, browser_languages: str, expected: str
) -> None:
    with reranking_proxy(WEIGHTS, rerank={"indices": [INDEX]}) as proxy, chromium() as browser:
        context = browser.new_context(locale=browser_languages, viewport={"width": 1440, "height": 1000})
        try:
            page = context.new_page()
            errors = _open(page, proxy.admin_url)
            assert page.get_attribute("body", "data-language") == expected
            assert page.input_value("#lang") == expected
            assert page.get_attribute("html", "lang") == {"en": "en", "zh": "zh-CN"}[expected]
            assert page.locator("#col-proxy .hit").count() > 0
            texts = page.evaluate(LABELS_JS)
            if expected == "zh":
                assert _english_words(texts) == set(), "no English label in Chinese"
                assert page.inner_text("#run") == "对比"
                assert CJK.search(page.inner_text("#moved-count"))
                assert CJK.search(page.inner_text("#timings"))
            else:
                assert [text for text in texts if CJK.search(text)] == [], "no Chinese label in English"
                assert page.inner_text("#run") == "Compare"
            if browser_languages in ("en-US", "zh-CN"):
                page.locator("#query").focus()
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"debug-ui-{expected}.png"))
            assert errors == []
        finally:
            context.close()


@pytest.mark.slow
def test_the_switch_changes_every_label_at_once_and_is_remembered(reranking_proxy: ProxyFactory) -> None:
    with reranking_proxy(WEIGHTS, rerank={"indices": [INDEX]}) as proxy, chromium() as browser:
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            errors = _open(page, proxy.admin_url)
            assert page.inner_text("#outcome").lower() == "applied"
            page.select_option("#lang", "zh")
            # The answer on screen is drawn again in Chinese, without running the search again.
            assert page.get_attribute("body", "data-language") == "zh"
            assert page.inner_text("#outcome") == "已重排"
            assert _english_words(page.evaluate(LABELS_JS)) == set()
            for name in WEIGHTS:
                page.eval_on_selector(
                    f"#w-{name}",
                    "el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                )
            page.wait_for_selector("#error:not([hidden])")
            assert page.inner_text("#error") == "至少有一个权重必须大于 0。", "errors are translated too"

            # A new visit: the stored choice wins over the browser's English.
            errors += _open(page, proxy.admin_url)
            assert page.get_attribute("body", "data-language") == "zh"
            assert page.get_attribute("#w-rerank", "aria-label") == "重排权重"
            page.select_option("#lang", "en")
            assert page.inner_text("#run") == "Compare"
            assert [text for text in page.evaluate(LABELS_JS) if CJK.search(text)] == []
            assert errors == []
        finally:
            context.close()
