"""Prometheus metrics on a registry passed in: is reranking on, is it helping, is it healthy."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..rollout.order_stats import kendall_tau, mean_position_change, top_k_overlap
from .record import SearchRecord

# Latencies from sub-millisecond proxy work up to Elasticsearch's slow searches.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MOVE_BUCKETS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
_BREAKER_STATES = ("closed", "half_open", "open")

# Label sets whose prometheus children `observe_search` keeps at hand (see there).
_CHILD_CACHE_MAX = 1024
# RFC 9110's methods and PATCH: the `method` label's values (anything else is `other`).
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def index_group(indices: Sequence[str], patterns: Sequence[str]) -> str:
    """The configured index pattern a search fell under: a label of bounded cardinality."""
    if not indices:
        return "_all"
    for pattern in patterns:
        if all(fnmatch.fnmatchcase(index, pattern) for index in indices):
            return pattern
    return "other"


def reason_label(reason: str | None) -> str:
    """A search's reason as a label of bounded cardinality.

    An `_msearch` logs one reason per search (`sort,-,size`); as a label, every combination a client can
    compose would be a new series kept for the process's life. One shared reason stays itself; a mix is
    `mixed` (the log line keeps the detail).
    """
    if not reason or "," not in reason:
        return reason or ""
    distinct = set(reason.split(",")) - {"-", ""}
    if not distinct:
        return ""
    return distinct.pop() if len(distinct) == 1 else "mixed"


class Metrics:
    """Every metric of the proxy, registered on `registry` (one per app, so tests and replicas stay apart)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._breaker_states: Callable[[], Mapping[str, str]] | None = None
        prefix = "es_rerank_proxy"
        self.searches = Counter(
            f"{prefix}_searches",
            "Searches by index group, canary mode, outcome and reason.",
            ["index_group", "mode", "outcome", "reason"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            f"{prefix}_request_seconds",
            "Whole search request time as the proxy saw it.",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.elasticsearch_seconds = Histogram(
            f"{prefix}_elasticsearch_seconds",
            "Time of the recall request to Elasticsearch.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_seconds = Histogram(
            f"{prefix}_model_seconds",
            "Time of the rerank step (model call, retries and cache), per reranked search.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.overhead_seconds = Histogram(
            f"{prefix}_overhead_seconds",
            "The proxy's own work on a reranked search: total minus Elasticsearch and model time.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            f"{prefix}_cache_hits",
            "Model scores served from a cache, by level (local: this process; shared: Redis).",
            ["level"],
            registry=registry,
        )
        self.vector_cache_hits = Counter(
            f"{prefix}_vector_cache_hits",
            "Passage vectors (api: embeddings) found in a cache, by level (local: in process; shared: Redis)",
            ["level"],
            registry=registry,
        )
        self.vector_cache_misses = Counter(
            f"{prefix}_vector_cache_misses",
            "Passage vectors (api: embeddings) in neither cache level: embedded for the search.",
            registry=registry,
        )
        self.shared_cache_errors = Counter(
            f"{prefix}_shared_cache_errors",
            "Failures of the shared score cache (Redis) by kind; the search went on without it.",
            ["kind"],
            registry=registry,
        )
        self.shared_cache_breaker = Gauge(
            f"{prefix}_shared_cache_breaker_state",
            "Circuit breaker of the shared score cache (Redis): 1 for the state it is in, 0 for the others.",
            ["state"],
            registry=registry,
        )
        self._shared_breaker_state: Callable[[], str] | None = None
        self.cache_misses = Counter(
            f"{prefix}_cache_misses", "Model scores not in the cache (sent to the model).", registry=registry
        )
        self.documents_sent = Counter(
            f"{prefix}_documents_sent", "Documents sent to the model for scoring.", registry=registry
        )
        self.moved = Histogram(
            f"{prefix}_top10_position_change",
            "Mean absolute position change of the first ten hits shown, against Elasticsearch's order.",
            buckets=_MOVE_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_model_calls_in_flight", "Model calls under way now.", registry=registry
        )
        self.elasticsearch_in_flight = Gauge(
            f"{prefix}_elasticsearch_requests_in_flight",
            "Requests to Elasticsearch under way now, passed-through ones included.",
            registry=registry,
        )
        self.breaker = Gauge(
            f"{prefix}_breaker_state",
            "Circuit breaker per reranker URL: 1 for the state it is in, 0 for the others.",
            ["url", "state"],
            registry=registry,
        )
        self.passthrough = Counter(
            f"{prefix}_passthrough_requests",
            "Requests forwarded untouched because they are not searches.",
            ["method"],
            registry=registry,
        )
        self._passthrough_by_method: dict[str, Counter] = {}
        self._search_children: dict[tuple[object, ...], tuple[Counter, Histogram]] = {}
        self.fast_lane = Counter(
            f"{prefix}_fast_lane_requests",
            "Of the requests forwarded untouched, those the fast lane answered without aiohttp's request "
            "machinery (edge/fast_lane.py); 0 while plain requests flow means the lane is shut.",
            registry=registry,
        )
        self.fast_lane_searches = Counter(
            f"{prefix}_fast_lane_searches",
            "Searches the fast lane handed to the pipeline without aiohttp's request machinery; the rest "
            "came through aiohttp's path (a large body, `Connection` or `Expect` headers, HTTP/1.0...).",
            registry=registry,
        )
        self.shadow_overlap = Histogram(
            f"{prefix}_shadow_top10_overlap",
            "Shadow mode: share of Elasticsearch's top ten that the reranked top ten keeps.",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=registry,
        )
        self.shadow_kendall_tau = Histogram(
            f"{prefix}_shadow_kendall_tau",
            "Shadow mode: Kendall tau between Elasticsearch's order and the proxy's, over the reranked hits.",
            buckets=(-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=registry,
        )
        self.shadow_moved = Histogram(
            f"{prefix}_shadow_position_change",
            "Shadow mode: mean absolute position change of the reranked top ten.",
            buckets=_MOVE_BUCKETS,
            registry=registry,
        )
        self.shadow_runs = Counter(
            f"{prefix}_shadow_runs",
            "Shadow reranks finished, by outcome (applied, degraded, skipped, error) and reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            f"{prefix}_shadow_dropped",
            "Shadow reranks not started, by reason (shadow_capacity, model_saturated, elasticsearch_busy).",
            ["reason"],
            registry=registry,
        )
        self.config_reloads = Counter(
            f"{prefix}_config_reloads",
            "Config reloads by result (applied, rejected).",
            ["result"],
            registry=registry,
        )
        self.ubi_records = Counter(
            f"{prefix}_ubi_records",
            "UBI query records written, or dropped by reason (queue_full, timeout, unavailable, rejected).",
            ["outcome", "reason"],
            registry=registry,
        )

    def count_ubi_records(self, outcome: str, reason: str, count: int) -> None:
        """Records the UBI recorder wrote ("written") or lost ("dropped", with why)."""
        self.ubi_records.labels(outcome, reason).inc(count)

    def observe_search(self, record: SearchRecord, patterns: Sequence[str]) -> None:
        """Count one finished search (or one `_msearch` request) into every metric it touches."""
        if record.phase == "shadow":
            self._observe_shadow(record)
            return
        labels = (tuple(patterns), record.indices, record.mode, record.outcome, record.reason, record.kind)
        children = self._search_children.get(labels)
        if children is None:
            # prometheus' own `labels()` validates and locks on every call. The key holds what the client
            # chose (index names, an _msearch's reasons), so the cache stops growing at a bound.
            group = index_group(record.indices, patterns)
            searches = self.searches.labels(group, record.mode, record.outcome, reason_label(record.reason))
            children = (searches, self.request_seconds.labels(record.kind))
            if len(self._search_children) < _CHILD_CACHE_MAX:
                self._search_children[labels] = children
        children[0].inc(record.searches)
        children[1].observe(record.total_s)
        if record.es_s:
            self.elasticsearch_seconds.observe(record.es_s)
        if record.outcome in ("applied", "degraded"):
            self.model_seconds.observe(record.rerank_s)
            self.overhead_seconds.observe(max(0.0, record.total_s - record.es_s - record.rerank_s))
        if record.cache_hits > record.shared_cache_hits:
            self.cache_hits.labels("local").inc(record.cache_hits - record.shared_cache_hits)
        if record.shared_cache_hits:
            self.cache_hits.labels("shared").inc(record.shared_cache_hits)
        if record.cache_misses:
            self.cache_misses.inc(record.cache_misses)
        if record.documents_sent:
            self.documents_sent.inc(record.documents_sent)
        if record.moved_top10 is not None and record.outcome == "applied":
            self.moved.observe(record.moved_top10)

    def _observe_shadow(self, record: SearchRecord) -> None:
        if record.outcome == "dropped":
            self.shadow_dropped.labels(reason_label(record.reason)).inc()
            return
        self.shadow_runs.labels(record.outcome, reason_label(record.reason)).inc()
        for order in record.orders:
            self.shadow_overlap.observe(top_k_overlap(order))
            self.shadow_kendall_tau.observe(kendall_tau(order))
            self.shadow_moved.observe(mean_position_change(order))

    def count_passthrough(self, method: str) -> None:
        """One request forwarded untouched; methods outside HTTP's own count as `other`, so a client
        inventing method names cannot grow the label set without bound."""
        child = self._passthrough_by_method.get(method)
        if child is None:
            child = self.passthrough.labels(method if method in _HTTP_METHODS else "other")
            if method in _HTTP_METHODS:
                self._passthrough_by_method[method] = child
        child.inc()

    def count_fast_lane(self, method: str, search: bool) -> None:
        """One request the fast lane took: a search for the pipeline, or one it forwarded untouched."""
        if search:
            self.fast_lane_searches.inc()
            return
        self.count_passthrough(method)
        self.fast_lane.inc()

    def track_scorer(
        self, in_flight: Callable[[], int], breaker_states: Callable[[], Mapping[str, str]]
    ) -> None:
        """Gauges read at scrape time from the scorer, so they are never stale."""
        self.in_flight.set_function(lambda: float(in_flight()))
        self._breaker_states = breaker_states

    def track_shared_cache(self, breaker_state: Callable[[], str]) -> None:
        """The shared cache's breaker gauge, read at scrape time."""
        self._shared_breaker_state = breaker_state

    def count_vector_lookup(self, local: int, shared: int, missing: int) -> None:
        """One search's passage-vector lookup (api: embeddings), by level."""
        if local:
            self.vector_cache_hits.labels("local").inc(local)
        if shared:
            self.vector_cache_hits.labels("shared").inc(shared)
        if missing:
            self.vector_cache_misses.inc(missing)

    def count_shared_cache_error(self, kind: str, count: int) -> None:
        """A failure of the shared cache (the search went on without it)."""
        self.shared_cache_errors.labels(kind).inc(count)

    def track_elasticsearch(self, in_flight: Callable[[], int]) -> None:
        """The in-flight gauge, read at scrape time from the Elasticsearch pool."""
        self.elasticsearch_in_flight.set_function(lambda: float(in_flight()))

    def refresh(self) -> None:
        """Bring the breaker gauges up to date (called just before each scrape)."""
        if self._shared_breaker_state is not None:
            current_shared = self._shared_breaker_state()
            for state in _BREAKER_STATES:
                self.shared_cache_breaker.labels(state).set(1.0 if state == current_shared else 0.0)
        if self._breaker_states is None:
            return
        for url, current in self._breaker_states().items():
            for state in _BREAKER_STATES:
                self.breaker.labels(url, state).set(1.0 if state == current else 0.0)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        self.refresh()
        return generate_latest(self.registry)
