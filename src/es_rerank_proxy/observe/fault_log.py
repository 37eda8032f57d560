"""Unplanned exceptions: one log line with the traceback per exception type and interval, never a flood."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

REPEAT_INTERVAL_S = 60.0


def report_due(last_reported: float | None, now: float, interval_s: float = REPEAT_INTERVAL_S) -> bool:
    """Whether an exception type last logged at `last_reported` may be logged again at `now`."""
    return last_reported is None or now - last_reported >= interval_s


class FaultLog:
    """Logs a fault's traceback at most once per exception type per `interval_s`; counts the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = REPEAT_INTERVAL_S,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, exc: BaseException, context: str) -> bool:
        """Log `exc` (with traceback) unless its type was logged within the interval; True when logged."""
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        now = self._clock()
        if not report_due(self._last.get(kind), now, self._interval_s):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} more of this type since the last report)" if suppressed else ""
        self._logger.error(
            "unplanned %s while %s; the client's request was forwarded untouched%s",
            type(exc).__name__,
            context,
            more,
            exc_info=exc,
        )
        return True
