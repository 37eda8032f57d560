"""One search as logs and metrics see it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Literal


@dataclass(slots=True)
class SearchRecord:
    """One search (or one `_msearch` request) as the logs and metrics see it."""

    kind: str
    indices: tuple[str, ...]
    # The client's address; `client` is its text, made when read: str() of an address is interpreted
    # Python, and the log line that reads it is written after the answer.
    client_address: IPv4Address | IPv6Address | None = None
    mode: str = "rerank"
    outcome: str = "skipped"  # applied | skipped | degraded | shadow | error
    reason: str | None = None
    phase: Literal["live", "shadow"] = "live"
    query_text: str | None = None
    es_s: float = 0.0
    rerank_s: float = 0.0
    total_s: float = 0.0
    documents_sent: int = 0
    cache_hits: int = 0
    shared_cache_hits: int = 0  # of cache_hits, those the shared level (Redis) had
    cache_misses: int = 0
    moved_top10: float | None = None
    orders: list[tuple[int, ...]] = field(default_factory=list)  # order_stats.compared_part of each
    searches: int = 1
    query_id: str | None = None  # the UBI query id(s) its record is written under (X-Query-Id)
    started: float = field(default_factory=time.perf_counter)

    def __init__(
        self,
        kind: str,
        indices: tuple[str, ...],
        client_address: IPv4Address | IPv6Address | None = None,
        mode: str = "rerank",
        outcome: str = "skipped",
        reason: str | None = None,
        phase: Literal["live", "shadow"] = "live",
        query_text: str | None = None,
        es_s: float = 0.0,
        rerank_s: float = 0.0,
        total_s: float = 0.0,
        documents_sent: int = 0,
        cache_hits: int = 0,
        shared_cache_hits: int = 0,
        cache_misses: int = 0,
        moved_top10: float | None = None,
        searches: int = 1,
        query_id: str | None = None,
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        self.kind = kind
        self.indices = indices
        self.client_address = client_address
        self.mode = mode
        self.outcome = outcome
        self.reason = reason
        self.phase = phase
        self.query_text = query_text
        self.es_s = es_s
        self.rerank_s = rerank_s
        self.total_s = total_s
        self.documents_sent = documents_sent
        self.cache_hits = cache_hits
        self.shared_cache_hits = shared_cache_hits
        self.cache_misses = cache_misses
        self.moved_top10 = moved_top10
        self.orders = []
        self.searches = searches
        self.query_id = query_id
        self.started = time.perf_counter()

    @property
    def client(self) -> str | None:
        return str(self.client_address) if self.client_address is not None else None

    def server_timing(self) -> str:
        """`Server-Timing` value: where this search's time went so far, in milliseconds."""
        total = (time.perf_counter() - self.started) * 1000
        return f"es;dur={self.es_s * 1000:.3f}, rerank;dur={self.rerank_s * 1000:.3f}, total;dur={total:.3f}"
