"""A real Redis (Debian's redis-server) on a free loopback port, and a Redis that never answers."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from es_rerank_proxy.tools.local_elasticsearch import free_port


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        """A sync client, for the test to look at or plant keys."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: gone mid-run, no goodbye to its clients."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def redis_server_binary() -> str:
    """The path of redis-server, or skip the test (scripts/test installs it on CI)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("redis-server is missing: apt-get install redis-server (scripts/test does on CI)")
    return binary


@contextmanager
def run_redis(tmp_dir: Path) -> Iterator[RedisServer]:
    """redis-server without persistence on a free loopback port, stopped afterwards."""
    binary = redis_server_binary()
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(url=f"redis://127.0.0.1:{port}/0", port=port, process=process)
        if _wait_ready(server):
            break
        process.kill()
        process.wait(timeout=10)
    else:
        raise RuntimeError("redis-server did not start on a free port")
    try:
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_ready(server: RedisServer, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    client = server.client()
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False  # the port was taken in the meantime
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


@dataclass
class HangingServer:
    url: str
    connections: int = 0


@asynccontextmanager
async def hanging_redis() -> AsyncIterator[HangingServer]:
    """A socket that accepts connections and reads what it is sent, and never answers."""
    held: list[asyncio.StreamWriter] = []
    state = HangingServer(url="")

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    state.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    try:
        yield state
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()
