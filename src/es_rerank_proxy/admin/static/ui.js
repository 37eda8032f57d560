// es-rerank-proxy relevance debug page: Elasticsearch's order next to the proxy's, for live weights.
"use strict";

(function () {
  const WEIGHTS = ["rerank", "bm25", "recency", "citations"];
  const SHOWN = ["rerank", "bm25", "recency", "citations", "prior", "final"];
  const SHORT = { citations: "component.citations.short" };
  const STORED_LANGUAGE = "es-rerank-proxy.language";
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const sliders = {};
  let config = null;
  let controller = null;
  let timer = null;
  let sequence = 0;
  // Labels by language (ui/i18n.json); the last answer and error, drawn again when the language changes.
  let table = { languages: { en: "English" }, en: { "error.settings": "Could not load the page's settings: {detail}" } };
  let language = "en";
  let shown = null;
  let shownError = null;

  // The label `key` in the current language, `{name}` filled from `params` (English if a key is missing).
  function t(key, params) {
    const text = (table[language] && table[language][key]) || table.en[key] || key;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (params && name in params ? String(params[name]) : whole));
  }

  // The same as nodes: each `{name}` becomes the node `params[name]` (a value shown as data, not a label).
  function tNodes(key, params) {
    const text = (table[language] && table[language][key]) || table.en[key] || key;
    return text.split(/(\{\w+\})/).filter(Boolean).map((part) => {
      const match = part.match(/^\{(\w+)\}$/);
      return match && match[1] in params ? params[match[1]] : document.createTextNode(part);
    });
  }

  // The stored choice, else the first of the browser's languages the page speaks, else English.
  function chooseLanguage() {
    let stored = null;
    try {
      stored = localStorage.getItem(STORED_LANGUAGE);
    } catch (error) {
      stored = null; // storage disabled: the browser's language decides
    }
    if (stored && table[stored]) return stored;
    for (const tag of navigator.languages || [navigator.language || ""]) {
      const base = String(tag).toLowerCase().split("-")[0];
      if (table[base]) return base;
    }
    return "en";
  }

  function setLanguage(next) {
    language = table[next] ? next : "en";
    document.documentElement.lang = language === "zh" ? "zh-CN" : language;
    $("lang").value = language;
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
      node.placeholder = t(node.dataset.i18nPlaceholder);
    }
    for (const node of document.querySelectorAll("[data-i18n-aria-label]")) {
      node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
    }
    for (const name of WEIGHTS) {
      if (!sliders[name]) continue;
      sliders[name].title.textContent = t("component." + name);
      sliders[name].input.setAttribute("aria-label", t("weights.aria", { name: t("component." + name) }));
    }
    if (config) renderLimits();
    if (shown) renderAnswer(shown.answer, shown.timing);
    if (shownError) showError(shownError.key, shownError.params);
    document.body.dataset.language = language;
  }

  function buildLanguageSwitch() {
    const select = $("lang");
    for (const [code, name] of Object.entries(table.languages)) {
      const option = new Option(name, code);
      option.lang = code; // each language is named in its own words
      option.dataset.raw = "";
      select.append(option);
    }
    select.addEventListener("change", () => {
      try {
        localStorage.setItem(STORED_LANGUAGE, select.value);
      } catch (error) {
        // storage disabled: the choice lasts for this page only
      }
      setLanguage(select.value);
    });
  }

  function raw(tag, text) {
    const node = el(tag, "", text);
    node.dataset.raw = ""; // data from the index or the server, shown as it is in any language
    return node;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function buildSliders() {
    for (const name of WEIGHTS) {
      const label = el("label", "slider");
      const title = el("span", "", t("component." + name));
      const heading = el("span");
      heading.append(el("i", "swatch " + name), title);
      const input = el("input");
      Object.assign(input, { type: "range", min: "0", max: "1", step: "0.05", id: "w-" + name });
      input.setAttribute("aria-label", t("weights.aria", { name: t("component." + name) }));
      const output = el("output");
      input.addEventListener("input", () => {
        output.textContent = Number(input.value).toFixed(2);
        schedule();
      });
      label.append(heading, input, output);
      $("sliders").append(label);
      sliders[name] = { input, output, title };
    }
  }

  function setWeights(weights) {
    for (const name of WEIGHTS) {
      const value = Math.min(1, Math.max(0, Number(weights[name]) || 0));
      sliders[name].input.value = String(value);
      sliders[name].output.textContent = Number(sliders[name].input.value).toFixed(2);
    }
  }

  function currentWeights() {
    const weights = {};
    for (const name of WEIGHTS) weights[name] = Number(sliders[name].input.value);
    return weights;
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(run, 250);
  }

  function badge(moved) {
    if (moved === "new") return { cls: "new", text: t("badge.new"), title: t("badge.new.title") };
    if (moved === "out") return { cls: "out", text: t("badge.out"), title: t("badge.out.title") };
    if (moved > 0) return { cls: "up", text: "▲ " + moved, title: t("badge.up.title", { n: moved }) };
    if (moved < 0) return { cls: "down", text: "▼ " + -moved, title: t("badge.down.title", { n: -moved }) };
    return { cls: "same", text: "—", title: t("badge.same.title") };
  }

  function fmt(value) {
    return value === null || value === undefined ? "–" : value.toFixed(3);
  }

  function renderHit(hit, position, weights, scale, side) {
    const item = el("li", "hit");
    const mark = badge(hit.moved);
    item.classList.add(mark.cls);
    item.dataset.key = hit.index + "/" + hit.id;

    const main = el("div", "main");
    const title = el("div", "title", hit.title);
    title.title = hit.title;
    title.dataset.raw = "";
    const other = side === "es" ? t("rank.proxy", { n: hit.rank + 1 }) : t("rank.es", { n: hit.es_rank + 1 });
    const sub = el("div", "sub");
    sub.append(raw("span", hit.id), " · " + other);

    const bar = el("div", "bar");
    for (const name of WEIGHTS) {
      const part = (weights[name] || 0) * (hit.components[name] || 0);
      if (part > 0 && scale > 0) {
        const seg = el("span", "seg " + name);
        seg.style.width = ((100 * part) / scale).toFixed(2) + "%";
        seg.title = t("component." + name) + " " + weights[name].toFixed(2) + " × " + fmt(hit.components[name]);
        bar.append(seg);
      }
    }

    const list = el("dl", "components");
    for (const name of SHOWN) {
      const cell = el("div", name);
      if (WEIGHTS.includes(name) && !weights[name]) {
        cell.classList.add("off");
        cell.title = t("weights.off");
      }
      cell.append(el("dt", "", t(SHORT[name] || "component." + name)), el("dd", "", fmt(hit.components[name])));
      list.append(cell);
    }
    main.append(title, sub, bar, list);

    const tag = el("span", "badge " + mark.cls, mark.text);
    tag.title = mark.title;
    tag.setAttribute("aria-label", mark.title);
    item.append(el("span", "pos", String(position + 1)), main, tag);
    return item;
  }

  function renderColumn(id, hits, weights, side) {
    const column = $(id);
    column.replaceChildren();
    if (!hits.length) {
      column.append(el("li", "empty", t("column.none")));
      return;
    }
    const scale = WEIGHTS.reduce((sum, name) => sum + (weights[name] || 0), 0);
    hits.forEach((hit, position) => column.append(renderHit(hit, position, weights, scale, side)));
  }

  // The error box: a label `key` whose `{detail}` (the server's or the browser's own words) is shown raw.
  function showError(key, params) {
    const box = $("error");
    shownError = key ? { key, params: params || {} } : null;
    const nodes = {};
    for (const [name, value] of Object.entries(params || {})) nodes[name] = raw("code", String(value));
    box.replaceChildren(...(key ? tNodes(key, nodes) : []));
    box.hidden = !key;
  }

  function serverTiming(header, fallback) {
    const parts = {};
    for (const entry of (header || "").split(",")) {
      const match = entry.trim().match(/^([\w-]+);dur=([\d.]+)/);
      if (match) parts[match[1]] = Number(match[2]);
    }
    const timing = Object.keys(parts).length ? parts : fallback || {};
    return ["es", "rerank", "total"]
      .filter((key) => timing[key] !== undefined)
      .map((key) => t("timing." + key, { ms: timing[key].toFixed(1) }))
      .join(" · ");
  }

  function renderSummary(answer, timingHeader) {
    const pill = $("outcome");
    pill.className = "pill " + answer.outcome;
    pill.textContent = t("outcome." + answer.outcome);
    const reason = $("reason");
    reason.replaceChildren();
    if (answer.reason) reason.append(...tNodes("summary.reason", { reason: raw("code", answer.reason) }));
    const moved = answer.proxy.filter((hit) => hit.moved !== 0).length;
    $("moved-count").textContent = t("summary.moved", { moved, total: answer.proxy.length });
    $("timings").textContent = serverTiming(timingHeader, answer.timing_ms);
    $("summary").hidden = false;
  }

  // A failed compare as [key, params]: the server's own words go in `detail`, shown as they are.
  function describeError(status, body) {
    const error = body && body.error;
    if (!error) return ["error.http", { status }];
    if (typeof error === "string") return ["error.http.detail", { status, detail: error }];
    const field = error.field ? " (" + error.field + ")" : "";
    const detail = (error.type || "error") + field + ": " + (error.reason || JSON.stringify(error));
    return ["error.http.detail", { status, detail }];
  }

  function renderAnswer(answer, timingHeader) {
    shown = { answer, timing: timingHeader };
    renderSummary(answer, timingHeader);
    renderColumn("col-es", answer.elasticsearch, answer.weights, "es");
    renderColumn("col-proxy", answer.proxy, answer.weights, "proxy");
  }

  function renderLimits() {
    const params = { top_n: raw("strong", String(config.top_n)), window: raw("strong", String(config.window)) };
    $("limits").replaceChildren(...tNodes("limits", params));
  }

  async function run() {
    clearTimeout(timer);
    const index = $("index").value.trim();
    if (!index) {
      showError("error.index");
      return;
    }
    const weights = currentWeights();
    if (!WEIGHTS.some((name) => weights[name] > 0)) {
      showError("error.weights");
      return;
    }
    const query = $("query").value.trim();
    const size = Number($("size").value) || config.size;
    const params = new URLSearchParams({ index, q: query });
    history.replaceState(null, "", "?" + params.toString());

    if (controller) controller.abort();
    controller = new AbortController();
    const mine = ++sequence;
    $("columns").classList.add("busy");
    $("summary").classList.add("busy");
    try {
      const response = await fetch("compare", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ index, query, size, weights }),
        signal: controller.signal,
      });
      const body = await response.json().catch(() => null);
      if (mine !== sequence) return;
      if (!response.ok) {
        showError(...describeError(response.status, body));
        return;
      }
      showError(null);
      renderAnswer(body, response.headers.get("Server-Timing"));
      document.body.dataset.state = "done";
    } catch (error) {
      if (error.name !== "AbortError") showError("error.unreachable", { detail: error.message });
    } finally {
      if (mine === sequence) {
        $("columns").classList.remove("busy");
        $("summary").classList.remove("busy");
      }
    }
  }

  function link(event, on) {
    const hit = event.target.closest(".hit");
    if (!hit) return;
    for (const node of document.querySelectorAll(".hit")) {
      if (node.dataset.key === hit.dataset.key) node.classList.toggle("linked", on);
    }
  }

  async function start() {
    const labels = await fetch("ui/i18n.json");
    table = await labels.json();
    buildLanguageSwitch();
    buildSliders();
    setLanguage(chooseLanguage());
    const response = await fetch("compare");
    config = await response.json();
    const url = new URLSearchParams(location.search);
    $("index").value = url.get("index") || config.index;
    $("query").value = url.get("q") || "";
    $("size").value = String(config.size);
    $("size").max = String(config.window);
    for (const pattern of config.indices) $("index-patterns").append(new Option(pattern));
    setWeights(config.weights);
    renderLimits();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
    $("reset").addEventListener("click", () => {
      setWeights(config.weights);
      run();
    });
    $("columns").addEventListener("mouseover", (event) => link(event, true));
    $("columns").addEventListener("mouseout", (event) => link(event, false));
    document.body.dataset.state = "ready";
    if (url.get("q")) run();
  }

  start().catch((error) => showError("error.settings", { detail: error.message }));
})();
