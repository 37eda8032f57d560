"""Writes UBI query records to Elasticsearch in the background: best effort, never in a search's way.

`submit` only appends to a bounded queue; a background task, alive while records wait, sends `_bulk`
writes every `flush_s` or as soon as `bulk_size` records wait, after creating the UBI index templates
if they are missing. A full queue, a slow, refusing or missing Elasticsearch drops records and counts
them by reason: the answer a client got never depends on its record. The proxy writes with its own
API key (`ubi.elasticsearch.api_key`), never with a client's credentials.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp
import orjson

from ..config import UbiConfig
from .ubi_queries import index_templates

log = logging.getLogger(__name__)

Count = Callable[[str, str, int], None]  # outcome ("written" | "dropped"), reason, how many
_TEMPLATE_RETRY_S = 30.0
_CLOSE_FLUSH_S = 2.0


class UbiRecorder:
    """A bounded queue of `ubi_queries` documents and the task that writes them with `_bulk`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        cfg: UbiConfig,
        urls: Sequence[str],
        count: Count,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._cfg = cfg
        self._urls = [url.rstrip("/") for url in urls]
        self._turn = itertools.cycle(range(len(self._urls)))
        self._count = count
        self._clock = clock
        self._pending: collections.deque[dict[str, object]] = collections.deque()
        self._wake = asyncio.Event()
        self._templates_due: float | None = 0.0 if cfg.create_templates and cfg.record else None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def writing(self) -> bool:
        """Whether a writer task is alive (only while records wait or are being written)."""
        return self._task is not None and not self._task.done()

    def submit(self, document: dict[str, object]) -> None:
        """Queue one record; when the queue is full (or the recorder closed) it is dropped and counted."""
        if self._closed:
            self._count("dropped", "shutdown", 1)
            return
        if len(self._pending) >= self._cfg.max_pending:
            self._count("dropped", "queue_full", 1)
            return
        self._pending.append(document)
        if self._task is None or self._task.done():
            # The writer runs only while records wait: an idle proxy keeps no task and makes no request.
            self._task = asyncio.ensure_future(self._run())
        elif len(self._pending) >= self._cfg.bulk_size:
            self._wake.set()

    async def aclose(self) -> None:
        """Stop the writer; what is queued, and a write under way, get one last, short chance to finish."""
        self._closed = True
        self._wake.set()  # what waits for the flush interval goes now
        if self.writing:
            assert self._task is not None
            # Not cancelled outright: a bulk request Elasticsearch may already have applied would be
            # counted as dropped.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), _CLOSE_FLUSH_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            self._count("dropped", "shutdown", len(self._pending))
            self._pending.clear()

    async def _run(self) -> None:
        while self._pending:
            if len(self._pending) < self._cfg.bulk_size:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._cfg.flush_s)
            self._wake.clear()
            try:
                await self._drain()
            except Exception:  # the next record starts a new writer
                log.exception("UBI recorder failed")

    async def _drain(self) -> None:
        if self._pending:
            # Before the first write, not at start: a proxy whose clients send no UBI never writes.
            await self._ensure_templates()
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(self._cfg.bulk_size, len(self._pending)))]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self._count("dropped", "shutdown", len(batch))
                raise

    async def _write(self, batch: list[dict[str, object]]) -> None:
        # `create`, not `index`: the least-privilege key needs only create_doc, and never overwrites.
        action = orjson.dumps({"create": {"_index": self._cfg.queries_index}})
        body = b"".join(action + b"\n" + orjson.dumps(doc) + b"\n" for doc in batch)
        result = await self._send("POST", "/_bulk", body, "application/x-ndjson")
        if isinstance(result, str):
            self._count("dropped", result, len(batch))
            return
        status, payload = result
        if status != 200:
            self._count("dropped", _status_reason(status), len(batch))
            return
        written, failed = _bulk_items(payload, len(batch))
        if written:
            self._count("written", "", written)
        for reason, n in failed.items():
            self._count("dropped", reason, n)

    async def _ensure_templates(self) -> None:
        if self._templates_due is None or self._clock() < self._templates_due:
            return
        templates = index_templates(self._cfg.queries_index, self._cfg.events_index)
        for name, template in templates.items():
            result = await self._send(
                "PUT", f"/_index_template/{name}?create=true", orjson.dumps(template), "application/json"
            )
            status, payload = result if isinstance(result, tuple) else (0, result.encode())
            if status != 200 and not (status == 400 and b"already exists" in payload):
                log.warning("UBI index template %s not created (%s); retrying later", name, status or result)
                self._templates_due = self._clock() + _TEMPLATE_RETRY_S
                return
        self._templates_due = None

    async def _send(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes] | str:
        """Status and body, or why there is none: "timeout" or "unavailable" (every node refused)."""
        headers = {"Content-Type": content_type}
        if self._cfg.elasticsearch.api_key:
            headers["Authorization"] = f"ApiKey {self._cfg.elasticsearch.api_key}"
        timeout = aiohttp.ClientTimeout(total=self._cfg.elasticsearch.timeout_s)
        first = next(self._turn)
        for url in self._urls[first:] + self._urls[:first]:
            try:
                async with self._session.request(
                    method, url + path, data=body, headers=headers, timeout=timeout
                ) as response:
                    return response.status, await response.read()
            except asyncio.TimeoutError:
                return "timeout"  # a slow cluster is slow from every node; do not pile on
            except aiohttp.ClientError:
                continue
        return "unavailable"


def _status_reason(status: int) -> str:
    if status == 429:
        return "rejected"
    if status in (401, 403):
        return "unauthorized"
    return "unavailable" if status >= 500 else "refused"


def _bulk_items(payload: bytes, sent: int) -> tuple[int, dict[str, int]]:
    """How many of a `_bulk`'s documents were written, and the others by reason."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0, {"bad_response": sent}
    items = parsed.get("items") if isinstance(parsed, dict) else None
    if not isinstance(items, list) or len(items) != sent:
        return 0, {"bad_response": sent}
    written = 0
    failed: dict[str, int] = {}
    for item in items:
        result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
        status = result.get("status") if isinstance(result, dict) else None
        if isinstance(status, int) and 200 <= status < 300:
            written += 1
        else:
            reason = _status_reason(status) if isinstance(status, int) else "bad_response"
            failed[reason] = failed.get(reason, 0) + 1
    return written, failed
