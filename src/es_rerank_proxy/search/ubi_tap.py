"""A search request's UBI side: `ext.ubi` out of the body, which searches get a query record, and the
records of what the client was shown, handed to the recorder once the answer is on its way.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson
from aiohttp import hdrs

from ..edge import http_io
from ..edge.exchange import Answer, ClientRequest
from ..observe.record import SearchRecord
from ..observe.ubi_queries import UbiRequest, query_document, shown_pages
from . import ubi
from .result import Done

log = logging.getLogger(__name__)

QUERY_ID_HEADER = "X-Query-Id"
Sink = Callable[[dict[str, object]], None]
# A forwarded answer is read for its hit ids only when it was buffered (edge.passthrough: 256 KiB);
# decompressed, it may be at most this large.
_MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class QueryTap:
    """Per search of one request: the id its record is written under (None: no record) and `ext.ubi`."""

    kind: str
    ids: tuple[str | None, ...] = ()
    requests: tuple[UbiRequest | None, ...] = ()
    bounds: tuple[tuple[int, int], ...] = ()

    def __init__(
        self,
        kind: str,
        ids: tuple[str | None, ...] = (),
        requests: tuple[UbiRequest | None, ...] = (),
        bounds: tuple[tuple[int, int], ...] = (),
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "requests", requests)
        object.__setattr__(self, "bounds", bounds)

    @property
    def header(self) -> str | None:
        """`X-Query-Id`: the id of each search, comma-separated (`-` for one without)."""
        return ",".join(qid or "-" for qid in self.ids) if any(self.ids) else None

    def ubi_query_ids(self) -> tuple[str | None, ...]:
        """The query ids the client itself sent: they, not generated ones, seed interleaving."""
        return tuple(request.query_id if request else None for request in self.requests)


def open_tap(
    kind: str,
    body: http_io.Body,
    request: ClientRequest,
    *,
    record: bool,
    record_all: bool,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> tuple[http_io.Body, QueryTap]:
    """The body Elasticsearch may see (without `ext.ubi`) and the searches to record."""
    if body.decoded is None:
        return body, QueryTap(kind)
    if kind == "search":
        stripped, one = ubi.strip_search(body.decoded)
        requests: tuple[UbiRequest | None, ...] = (one,)
    else:
        stripped, requests = ubi.strip_msearch(body.decoded)
    if stripped is not body.decoded:
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        body = http_io.Body(_encode(stripped, encoding), stripped)
    if not record or not (record_all or any(r is not None and r.query_id for r in requests)):
        return body, QueryTap(kind, requests=requests)
    bodies = ubi.search_bodies(kind, stripped)
    requests = requests or (None,) * len(bodies)
    if len(requests) != len(bodies):
        return body, QueryTap(kind, requests=requests)
    ids = tuple(
        r.query_id if r is not None and r.query_id else (new_id() if record_all else None) for r in requests
    )
    params = request.params() if kind == "search" else {}
    bounds = tuple(ubi.page_bounds(search, params) for search in bodies)
    return body, QueryTap(kind, ids, requests, bounds)


def schedule_records(
    tap: QueryTap,
    sink: Sink | None,
    arm: str,
    answer: Answer,
    done: Done | None,
    record: SearchRecord,
    clock: Callable[[], datetime],
) -> None:
    """Hand the query records of this request to `sink` once the answer is on its way; `clock` is read
    then, not before: most searches have no record to write."""
    if sink is None or tap.header is None or answer.status != 200:
        return

    def write() -> None:
        try:
            for document in _documents(tap, arm, answer, done, record, clock()):
                sink(document)
        except Exception:  # a record must never fail a search
            log.exception("UBI query record failed")

    asyncio.get_running_loop().call_soon(write)


def _documents(
    tap: QueryTap,
    arm: str,
    answer: Answer,
    done: Done | None,
    record: SearchRecord,
    now: datetime,
) -> list[dict[str, object]]:
    count = len(tap.ids)
    reasons: tuple[str | None, ...]
    if done is not None:
        shown: object = done.body
        outcomes, reasons, teams = done.outcomes, done.reasons, done.teams
    else:  # forwarded: Elasticsearch's own answer, the same outcome for each search
        shown = _forwarded_answer(answer)
        outcomes, reasons, teams = (record.outcome,) * count, (record.reason,) * count, ()
        if record.outcome == "shadow":
            outcomes, reasons = ("skipped",) * count, ("shadow",) * count
    answers = [shown] if tap.kind == "search" else _responses(shown)
    if len(answers) != count:
        answers = [None] * count  # hits unknown rather than misattributed
    id_fields = [request.object_id_field if request else None for request in tap.requests]
    pages = shown_pages(arm, answers, outcomes, reasons, tap.bounds, teams, id_fields)
    return [
        query_document(
            qid,
            tap.requests[i],
            pages[i],
            now,
            query_response_id=str(uuid.uuid4()),
            query_text=record.query_text if tap.kind == "search" else None,
        )
        for i, qid in enumerate(tap.ids)
        if qid is not None
    ]


def _forwarded_answer(answer: Answer) -> object:
    payload = answer.body
    if payload is None:
        return None  # streamed (large) answers are not kept: their records carry no hit ids
    encoding = answer.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    try:
        if encoding in ("gzip", "deflate"):
            inflater = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)
            payload = inflater.decompress(payload, _MAX_ANSWER_BYTES)
        elif encoding not in ("", "identity"):
            return None
        return orjson.loads(payload)
    except (zlib.error, orjson.JSONDecodeError):
        return None


def _responses(answer: object) -> list[object]:
    responses = answer.get("responses") if isinstance(answer, Mapping) else None
    return list(responses) if isinstance(responses, list) else []


def _encode(body: bytes, encoding: str) -> bytes:
    """The stripped body in the client's Content-Encoding, so the client's headers still describe it."""
    if encoding == "gzip":
        return gzip.compress(body, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body)
    return body
