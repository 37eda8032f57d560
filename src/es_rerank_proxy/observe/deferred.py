"""A finished search's bookkeeping (its metrics, its log line), done a moment after its answer went out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .record import SearchRecord

log = logging.getLogger(__name__)

# A client on a keep-alive connection sends its next request tens of microseconds after reading an answer.
# Observed in the loop turn after the answer, that request waited behind ~50 µs of metrics and log line;
# a millisecond later, the bookkeeping mostly runs while the proxy waits on Elasticsearch or the model.
OBSERVE_DELAY_S = 0.001


class DeferredObserver:
    """Hands each finished search's record to `observe` `delay_s` later, in batches, one timer at a time.

    Whatever reads what was observed (a metrics scrape, shutdown) calls `flush` first, so nothing is
    missed for being a millisecond old. A failing observer is logged: it must never fail a search.
    """

    def __init__(self, observe: Callable[[SearchRecord], None], delay_s: float) -> None:
        self._observe = observe
        self._delay_s = delay_s
        self._pending: list[SearchRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def __call__(self, record: SearchRecord) -> None:
        if self._closed:
            self._run(record)
            return
        self._pending.append(record)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.flush)

    def flush(self) -> None:
        """Observe every record handed in so far, now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for record in pending:
            self._run(record)

    def close(self) -> None:
        """Observe what is pending; from now on each record as it comes (the loop may be going away)."""
        self._closed = True
        self.flush()

    def _run(self, record: SearchRecord) -> None:
        try:
            self._observe(record)
        except Exception:  # observability must never fail a search
            log.exception("search observer failed")
