"""Load generators: wrk (closed loop, fixed connections), an aiohttp fallback, and an open-loop client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    latency_ms: float
    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Throughput:
    """A closed-loop run: requests per second, latency percentiles, failed requests."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- wrk ----------------------------------------------------------------------------------------------

_WRK_SCRIPT = """\
local paths = {%s}
local i = 0
request = function()
    i = i %% #paths + 1
    return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
        summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(
    base_url: str, paths: Sequence[str], connections: int, duration_s: float, tmp: Path
) -> Throughput:
    """`wrk --latency` cycling through `paths` (GETs); percentiles come from its `done` hook in µs."""
    script = tmp / "wrk.lua"
    script.write_text(_WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(script),
        base_url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration_s + 60)
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return Throughput(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
        tool="wrk",
    )


# --- aiohttp ------------------------------------------------------------------------------------------


def new_session(base_url: str, connections: int) -> aiohttp.ClientSession:
    """No Accept-Encoding, like wrk and elasticsearch-py's default: answers come back uncompressed."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=60)
    return aiohttp.ClientSession(
        base_url,
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=30),
        skip_auto_headers=("Accept-Encoding",),
    )


async def send(session: aiohttp.ClientSession, request: Request, keep: Sequence[str] = ()) -> Sample:
    """One request, its body read to the end; `keep` names response headers to record."""
    headers = {"Content-Type": "application/json"} if request.body is not None else None
    started = time.perf_counter()
    try:
        async with session.request(
            request.method, request.path, data=request.body, headers=headers
        ) as response:
            await response.read()
            status, kept = response.status, {h: response.headers[h] for h in keep if h in response.headers}
    except (aiohttp.ClientError, asyncio.TimeoutError):
        status, kept = 0, {}
    return Sample((time.perf_counter() - started) * 1000, status, kept)


async def closed_loop(
    base_url: str, requests: Sequence[Request], connections: int, duration_s: float | None = None
) -> list[Sample]:
    """`connections` workers send back to back, cycling through `requests`, for `duration_s` or one pass."""
    samples: list[Sample] = []
    deadline = time.perf_counter() + duration_s if duration_s else None
    next_index = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while deadline is not None or next_index < len(requests):
            if deadline is not None and time.perf_counter() >= deadline:
                return
            request = requests[next_index % len(requests)]
            next_index += 1
            samples.append(await send(session, request))

    async with new_session(base_url, connections) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return samples


def run_aiohttp(base_url: str, paths: Sequence[str], connections: int, duration_s: float) -> Throughput:
    """The wrk fallback: the same GETs from aiohttp workers (slower, so a lower ceiling than wrk)."""
    started = time.perf_counter()
    samples = asyncio.run(closed_loop(base_url, [Request("GET", p) for p in paths], connections, duration_s))
    elapsed = time.perf_counter() - started
    latencies = [s.latency_ms for s in samples]
    return Throughput(
        rps=len(samples) / elapsed,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        errors=sum(1 for s in samples if not 200 <= s.status < 400),
        tool="aiohttp",
    )


async def open_loop(
    base_url: str, make: Callable[[int], Request], rate: float, duration_s: float, keep: Sequence[str] = ()
) -> list[Sample]:
    """Start request i at i/rate seconds whether or not earlier ones have answered (a fixed arrival rate)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Sample]] = []
    async with new_session(base_url, 1024) as session:
        start = loop.time()
        for i in range(max(1, round(rate * duration_s))):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, make(i), keep)))
        return list(await asyncio.gather(*tasks))
