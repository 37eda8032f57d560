"""Warm-ups as jobs the admin listener owns: they outlive the request that started them.

`POST /_rerank/warm?index=I` starts a job for I, or joins the one running, and streams its progress as
NDJSON; the caller leaving does not stop it. `GET /_rerank/warm` says where each index's latest job is.
Jobs are cancelled when the admin listener shuts down, before the runtime closes the sessions they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import web

from ..errors import ProxyError
from ..model.embeddings import EmbeddingsClient
from ..runtime import Runtime
from .warm import Progress, warm_index

log = logging.getLogger(__name__)

JobState = Literal["running", "done", "failed"]
# Runs one warm-up: (index, limit, credentials, progress) -> the count embedded.
WarmRunner = Callable[[str, "int | None", Mapping[str, str], Progress], Awaitable[int]]

# A progress line at least this often, so a client's read timeout tells a silent proxy from a slow batch.
HEARTBEAT_S = 10.0


@dataclass
class WarmJob:
    """One index's warm-up: where it is, and an event that fires whenever that changes."""

    index: str
    limit: int | None
    started: float  # wall clock, seconds since the epoch
    state: JobState = "running"
    done: int = 0
    total: int = 0
    embedded: int = 0
    error: str | None = None
    finished: float | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self._notify()

    def finish(self, *, embedded: int = 0, error: str | None = None, at: float) -> None:
        self.state = "failed" if error is not None else "done"
        self.embedded, self.error, self.finished = embedded, error, at
        self._notify()

    async def changed(self, timeout_s: float) -> None:
        """Return when the job moves on, or after `timeout_s` (a heartbeat)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    def status(self) -> dict[str, object]:
        """The job as `GET /_rerank/warm` shows it."""
        return {
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "limit": self.limit,
            "embedded": self.embedded,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished is not None else None,
            "error": self.error,
        }

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class WarmJobs:
    """At most one running warm-up per index; the latest job per index is kept for its status."""

    def __init__(self, run: WarmRunner, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._run = run
        self._clock = wall_clock
        self._jobs: dict[str, WarmJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def status(self) -> dict[str, dict[str, object]]:
        """Each index's latest job."""
        return {index: job.status() for index, job in sorted(self._jobs.items())}

    def start_or_join(
        self, index: str, limit: int | None, credentials: Mapping[str, str]
    ) -> tuple[WarmJob, bool]:
        """The running job for `index` (joined: True), else a new one started now (joined: False)."""
        running = self._jobs.get(index)
        if running is not None and running.state == "running":
            return running, True
        job = WarmJob(index=index, limit=limit, started=self._clock())
        self._jobs[index] = job
        task = asyncio.get_running_loop().create_task(self._execute(job, dict(credentials)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job, False

    async def _execute(self, job: WarmJob, credentials: dict[str, str]) -> None:
        try:
            embedded = await self._run(job.index, job.limit, credentials, job.progress)
        except ProxyError as exc:
            job.finish(error=f"{type(exc).__name__}: {exc}", at=self._clock())
        except asyncio.CancelledError:
            job.finish(error="the proxy is shutting down", at=self._clock())
            raise
        except Exception as exc:  # a job nobody awaits must still say how it ended
            log.exception("warm-up of %s failed", job.index)
            job.finish(error=f"{type(exc).__name__}: {exc}", at=self._clock())
        else:
            job.finish(embedded=embedded, at=self._clock())

    async def aclose(self) -> None:
        """Cancel the running jobs and wait until they have stopped."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _line(data: Mapping[str, object]) -> bytes:
    return orjson.dumps(data) + b"\n"


WARM_JOBS = web.AppKey("warm_jobs", WarmJobs)


async def _stream_job(response: web.StreamResponse, job: WarmJob, joined: bool, heartbeat_s: float) -> None:
    await response.write(_line({"job": {"index": job.index, "joined": joined, **job.status()}}))
    while job.state == "running":
        await job.changed(heartbeat_s)
        await response.write(_line({"done": job.done, "total": job.total}))
    if job.error is not None:
        final: dict[str, object] = {"error": job.error}
    else:
        seconds = (job.finished or job.started) - job.started
        final = {"embedded": job.embedded, "seconds": round(seconds, 1)}
    await response.write(_line(final))
    await response.write_eof()


def add_routes(admin: web.Application, runtime: Runtime, *, heartbeat_s: float = HEARTBEAT_S) -> None:
    """`POST /_rerank/warm?index=I[&limit=N]` (progress as NDJSON) and `GET /_rerank/warm` (status)."""

    async def run(index: str, limit: int | None, credentials: Mapping[str, str], progress: Progress) -> int:
        client = runtime.client
        if not isinstance(client, EmbeddingsClient):
            raise ProxyError("the reranker is no longer an embeddings model (config reloaded)")
        return await warm_index(
            runtime.config.elasticsearch.url[0],
            index,
            config=runtime.config,
            session=runtime.es.session,
            progress=progress,
            limit=limit,
            client=client,
            headers=credentials,
        )

    jobs = WarmJobs(run)
    admin[WARM_JOBS] = jobs

    async def close_jobs(_: web.Application) -> None:
        await jobs.aclose()

    admin.on_cleanup.append(close_jobs)

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"indices": jobs.status()})

    async def warm(request: web.Request) -> web.StreamResponse:
        index = request.query.get("index", "")
        limit_text = request.query.get("limit", "")
        if not isinstance(runtime.client, EmbeddingsClient):
            reason = f"reranker.api is {runtime.config.reranker.api!r}: only 'embeddings' has vectors to warm"
            return web.json_response({"error": reason}, status=409)
        if not index or (limit_text and not limit_text.isdigit()):
            return web.json_response(
                {"error": "expected ?index=NAME and an optional whole-number limit"}, status=400
            )
        credentials = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        job, joined = jobs.start_or_join(index, int(limit_text) if limit_text else None, credentials)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # The caller may leave at any write; the job goes on without it (see GET /_rerank/warm).
        with contextlib.suppress(ConnectionResetError):
            await _stream_job(response, job, joined, heartbeat_s)
        return response

    admin.router.add_post("/_rerank/warm", warm)
    admin.router.add_get("/_rerank/warm", status)
