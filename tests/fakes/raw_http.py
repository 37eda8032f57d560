"""A real TCP server that answers each HTTP request with bytes a test scripts: for framing edge cases.

aiohttp's server always frames its answers correctly; an Elasticsearch node (or what sits between) may
not, and a kept-alive connection may be closed under the client at any moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class RawHttpServer:
    """`answer(request_head)` gives the bytes to send back and whether to close the connection after."""

    answer: Callable[[bytes], tuple[bytes, bool]]
    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # each request's head and body as received


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lowered = head.lower()
    body = b""
    if b"content-length:" in lowered:
        length = int(lowered.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
            if size == 0:
                break
    return head + body


@asynccontextmanager
async def raw_http_server(answer: Callable[[bytes], tuple[bytes, bool]]) -> AsyncIterator[RawHttpServer]:
    """Serve on a free loopback port until the block ends."""
    server = RawHttpServer(answer)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                server.requests.append(request)
                data, close = server.answer(request)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
