"""Background shadow reranks: bounded, never awaited by an answer, all cancelled at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowLoad:
    """What admission looks at: shadow work running, model calls and Elasticsearch requests in flight."""

    shadows: int
    model_calls: int
    elasticsearch_requests: int


@dataclass(frozen=True, slots=True)
class ShadowLimits:
    max_shadows: int
    max_model_calls: int
    max_elasticsearch_requests: int  # 0: no limit


def shadow_refusal(load: ShadowLoad, limits: ShadowLimits) -> str | None:
    """Why one more shadow rerank must not start now, or None when it may.

    A shadow's recall is one more search for Elasticsearch and its rerank one more call for the model;
    when either already has a queue, that work would make live answers wait, so it is dropped instead.
    """
    if load.shadows >= limits.max_shadows:
        return "shadow_capacity"
    if load.model_calls >= limits.max_model_calls:
        return "model_saturated"
    if 0 < limits.max_elasticsearch_requests <= load.elasticsearch_requests:
        return "elasticsearch_busy"
    return None


class ShadowRunner:
    """Starts shadow work as tasks while admission allows; refused work is dropped, with the reason."""

    def __init__(self, load: Callable[[], tuple[int, int]], limits: Callable[[], ShadowLimits]) -> None:
        self._load = load  # model calls and Elasticsearch requests in flight
        self._limits = limits
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, work: Callable[[], Awaitable[None]]) -> str | None:
        """Run `work` in the background; the reason it was refused (and nothing started), or None."""
        model_calls, es_requests = self._load()
        refusal = shadow_refusal(ShadowLoad(len(self._tasks), model_calls, es_requests), self._limits())
        if refusal is not None:
            return refusal
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return None

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
