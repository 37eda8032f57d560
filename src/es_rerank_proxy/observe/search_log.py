"""One JSON log line per search: what happened, how long each part took, and a hash of the query."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone

import orjson

from ..rollout.order_stats import kendall_tau, top_k_overlap
from .record import SearchRecord

SEARCH_LOGGER = "es_rerank_proxy.searches"


def query_hash(text: str) -> str:
    """A short stable digest of the query text, so logs can group queries without holding the text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def search_log_fields(record: SearchRecord, *, include_query_text: bool, now: datetime) -> dict[str, object]:
    """The fields of one search's log line, in a stable order."""
    fields: dict[str, object] = {
        "time": now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": "search" if record.phase == "live" else "shadow",
        "client": record.client,
        "kind": record.kind,
        "index": ",".join(record.indices) or "_all",
        "mode": record.mode,
        "outcome": record.outcome,
        "reason": record.reason,
        "es_ms": round(record.es_s * 1000, 3),
        "rerank_ms": round(record.rerank_s * 1000, 3),
        "total_ms": round(record.total_s * 1000, 3),
        "hits_moved": record.moved_top10,
        "documents_sent": record.documents_sent,
        "cache_hits": record.cache_hits,
        "query_hash": query_hash(record.query_text) if record.query_text is not None else None,
    }
    if record.phase == "shadow" and record.orders:
        fields["top10_overlap"] = [round(top_k_overlap(order), 3) for order in record.orders]
        fields["kendall_tau"] = [round(kendall_tau(order), 3) for order in record.orders]
    if record.searches != 1:
        fields["searches"] = record.searches
    if include_query_text:
        fields["query_text"] = record.query_text
    return fields


def log_search(logger: logging.Logger, record: SearchRecord, *, include_query_text: bool) -> None:
    """Write the record as one JSON line at INFO."""
    if logger.isEnabledFor(logging.INFO):
        fields = search_log_fields(
            record, include_query_text=include_query_text, now=datetime.now(timezone.utc)
        )
        logger.info(orjson.dumps(fields).decode())
