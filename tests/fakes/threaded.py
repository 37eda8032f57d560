"""Run an async server (any async context manager) on its own event loop in a thread.

Sync clients such as the official `elasticsearch.Elasticsearch` block the thread they run in; servers they
reach must not share that thread's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def in_thread(factory: Callable[[], AbstractAsyncContextManager[T]], name: str = "server") -> Iterator[T]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with factory() as value:
            holder["value"] = value
            started.set()
            await stop.wait()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # handed to the test thread below
            holder["error"] = exc
            started.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not started.wait(60):
        raise RuntimeError(f"{name} did not start within 60 s")
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["value"]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        if "error" in holder:
            raise holder["error"]
