// es-rerank-proxy relevance debug page: Elasticsearch's order next to the proxy's, for live weights.
"use strict";

(function () {
  const WEIGHTS = ["rerank", "bm25", "recency", "citations"];
  const SHOWN = ["rerank", "bm25", "recency", "citations", "prior", "final"];
  const LABELS = { rerank: "rerank", bm25: "bm25", recency: "recency", citations: "cit.", prior: "prior", final: "final" };
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const sliders = {};
  let config = null;
  let controller = null;
  let timer = null;
  let sequence = 0;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function buildSliders() {
    for (const name of WEIGHTS) {
      const label = el("label", "slider");
      const title = el("span");
      title.append(el("i", "swatch " + name), name);
      const input = el("input");
      Object.assign(input, { type: "range", min: "0", max: "1", step: "0.05", id: "w-" + name });
      input.setAttribute("aria-label", name + " weight");
      const output = el("output");
      input.addEventListener("input", () => {
        output.textContent = Number(input.value).toFixed(2);
        schedule();
      });
      label.append(title, input, output);
      $("sliders").append(label);
      sliders[name] = { input, output };
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
    if (moved === "new") return { cls: "new", text: "new", title: "outside Elasticsearch's top hits" };
    if (moved === "out") return { cls: "out", text: "out ▼", title: "fell out of the proxy's top hits" };
    if (moved > 0) return { cls: "up", text: "▲ " + moved, title: "moved up " + moved };
    if (moved < 0) return { cls: "down", text: "▼ " + -moved, title: "moved down " + -moved };
    return { cls: "same", text: "—", title: "same position" };
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
    const other = side === "es" ? "proxy #" + (hit.rank + 1) : "ES #" + (hit.es_rank + 1);
    const sub = el("div", "sub", hit.id + " · " + other);

    const bar = el("div", "bar");
    for (const name of WEIGHTS) {
      const part = (weights[name] || 0) * (hit.components[name] || 0);
      if (part > 0 && scale > 0) {
        const seg = el("span", "seg " + name);
        seg.style.width = ((100 * part) / scale).toFixed(2) + "%";
        seg.title = name + " " + weights[name].toFixed(2) + " × " + fmt(hit.components[name]);
        bar.append(seg);
      }
    }

    const list = el("dl", "components");
    for (const name of SHOWN) {
      const cell = el("div", name);
      if (WEIGHTS.includes(name) && !weights[name]) {
        cell.classList.add("off");
        cell.title = "weight 0: not used";
      }
      cell.append(el("dt", "", LABELS[name]), el("dd", "", fmt(hit.components[name])));
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
      column.append(el("li", "empty", "No hits."));
      return;
    }
    const scale = WEIGHTS.reduce((sum, name) => sum + (weights[name] || 0), 0);
    hits.forEach((hit, position) => column.append(renderHit(hit, position, weights, scale, side)));
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function serverTiming(header, fallback) {
    const parts = {};
    for (const entry of (header || "").split(",")) {
      const match = entry.trim().match(/^([\w-]+);dur=([\d.]+)/);
      if (match) parts[match[1]] = Number(match[2]);
    }
    const timing = Object.keys(parts).length ? parts : fallback || {};
    const label = { es: "Elasticsearch", rerank: "model", total: "total" };
    return Object.keys(label)
      .filter((key) => timing[key] !== undefined)
      .map((key) => label[key] + " " + timing[key].toFixed(1) + " ms")
      .join(" · ");
  }

  function renderSummary(answer, timingHeader) {
    const pill = $("outcome");
    pill.className = "pill " + answer.outcome;
    pill.textContent = answer.outcome;
    const reason = $("reason");
    reason.replaceChildren();
    if (answer.reason) reason.append("reason ", el("code", "", answer.reason));
    const moved = answer.proxy.filter((hit) => hit.moved !== 0).length;
    $("moved-count").textContent = moved + " of " + answer.proxy.length + " hits moved";
    $("timings").textContent = serverTiming(timingHeader, answer.timing_ms);
    $("summary").hidden = false;
  }

  function describeError(status, body) {
    const error = body && body.error;
    if (!error) return "Request failed with HTTP " + status + ".";
    if (typeof error === "string") return "HTTP " + status + ": " + error;
    const field = error.field ? " (" + error.field + ")" : "";
    return "HTTP " + status + " " + (error.type || "error") + field + ": " + (error.reason || JSON.stringify(error));
  }

  async function run() {
    clearTimeout(timer);
    const index = $("index").value.trim();
    if (!index) {
      showError("Enter an index name.");
      return;
    }
    const weights = currentWeights();
    if (!WEIGHTS.some((name) => weights[name] > 0)) {
      showError("At least one weight must be above 0.");
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
        showError(describeError(response.status, body));
        return;
      }
      showError("");
      renderSummary(body, response.headers.get("Server-Timing"));
      renderColumn("col-es", body.elasticsearch, body.weights, "es");
      renderColumn("col-proxy", body.proxy, body.weights, "proxy");
      document.body.dataset.state = "done";
    } catch (error) {
      if (error.name !== "AbortError") showError("Could not reach the proxy: " + error.message);
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
    buildSliders();
    const response = await fetch("compare");
    config = await response.json();
    const url = new URLSearchParams(location.search);
    $("index").value = url.get("index") || config.index;
    $("query").value = url.get("q") || "";
    $("size").value = String(config.size);
    $("size").max = String(config.window);
    for (const pattern of config.indices) $("index-patterns").append(new Option(pattern));
    setWeights(config.weights);
    const limits = $("limits");
    limits.replaceChildren("top_n ", el("strong", "", String(config.top_n)), " · window ", el("strong", "", String(config.window)));
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

  start().catch((error) => showError("Could not load the page's settings: " + error.message));
})();
