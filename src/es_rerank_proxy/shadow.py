"""Background shadow reranks: bounded, never awaited by an answer, all cancelled at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class ShadowRunner:
    """Starts shadow work as tasks while there is room; full, or with the model saturated, work is dropped."""

    def __init__(self, capacity: Callable[[], int], model_saturated: Callable[[], bool]) -> None:
        self._capacity = capacity
        self._model_saturated = model_saturated
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Run `work` in the background; False (and nothing started) when there is no room for it."""
        if len(self._tasks) >= self._capacity() or self._model_saturated():
            return False
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shadow rerank failed", exc_info=task.exception())

    async def aclose(self) -> None:
        """Cancel whatever is still running and wait for it to stop."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
