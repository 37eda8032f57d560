"""The fast lane's view of a client connection: where each request in its byte stream ends, and which
requests are plain enough for the lane (`fast_lane`) to take instead of aiohttp.

The listener feeds every byte it receives to a `RequestMirror` (llhttp, through httptools) as well as,
when the lane does not take the request, to aiohttp; so the mirror follows the stream whichever of the
two answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import httptools

# Bodies up to this size ride the lane when they arrived whole; larger ones stream through aiohttp.
MAX_LANE_BODY = 64 * 1024
# Request headers that make a request more than plain: aiohttp's path deals with each properly.
_NOT_PLAIN = frozenset({b"expect", b"upgrade", b"connection", b"transfer-encoding", b"te", b"keep-alive"})
# What the lane's `classify` says of a search (the pipeline's own description of its endpoint), handed
# to the pipeline with it, so a search is classified once.
SearchT = TypeVar("SearchT")


@dataclass(frozen=True, slots=True)
class Plain:
    """A whole, plain request, as the mirror parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None
    # A search, as the lane's `classify` described it (a `SearchT`): the pipeline's, not a forward. Not
    # generic itself: mypyc cannot build a generic dataclass.
    search: object | None = None

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        search: object | None = None,
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "search", search)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The listener's parser limits: a head beyond them is aiohttp's to refuse (431), not the lane's."""

    max_line_size: int
    max_field_size: int
    max_headers: int


class RequestMirror(Generic[SearchT]):
    """Follows the client's byte stream request by request, so the lane knows where each one ends.

    `classify(method, path)` picks out the requests the pipeline must see (None for any other); without
    `takes_searches` they are never `Plain`.
    """

    def __init__(
        self,
        limits: HeadLimits,
        classify: Callable[[str, str], SearchT | None],
        takes_searches: bool = False,
    ) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._limits = limits
        self._classify = classify
        self._takes_searches = takes_searches
        self.broken = False  # the stream could not be followed: the lane stays shut for this connection
        self.mid_message = False
        self._head_complete = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._completed: list[Plain | None] = []

    def feed(self, data: bytes) -> list[Plain | None]:
        """The requests `data` completes, each as `Plain` when the lane may take it, else None."""
        self._completed = []
        if self.broken:
            return []
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.broken = True
            return []
        return self._completed

    # --- httptools callbacks -------------------------------------------------------------------------

    @property
    def awaiting_small_body(self) -> bool:
        """Mid-request, its head whole, a body declared by Content-Length that the lane could take."""
        if not self._head_complete:
            return False
        if any(_not_plain(name, value) for name, value in self._headers):
            return False  # `Expect: 100-continue` above all: its client waits for aiohttp's 100
        declared = [value for name, value in self._headers if name.lower() == b"content-length"]
        return len(declared) == 1 and declared[0].isdigit() and int(declared[0]) <= MAX_LANE_BODY

    def on_message_begin(self) -> None:
        self.mid_message = True
        self._head_complete = False
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_complete = True

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size <= MAX_LANE_BODY:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self.mid_message = False
        self._completed.append(self._plain())

    def _plain(self) -> Plain | None:
        parser = self._parser
        url = self._url
        limits = self._limits
        if (
            parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or self._body_size > MAX_LANE_BODY
            or len(url) > limits.max_line_size
            or len(self._headers) > limits.max_headers
            or not url.startswith(b"/")
            or b"#" in url
            or not url.isascii()
        ):
            return None
        method = parser.get_method().decode("ascii")
        target = url.decode("ascii")
        search = self._classify(method, target.partition("?")[0])
        if search is not None and not self._takes_searches:
            return None  # checked before the headers: a search's are not worth decoding here
        headers: list[tuple[str, str]] = []
        for name, value in self._headers:
            if len(name) + len(value) > limits.max_field_size or not (name.isascii() and value.isascii()):
                return None
            if _not_plain(name, value):
                return None
            headers.append((name.decode("ascii"), value.decode("ascii")))
        body = b"".join(self._body) if self._body_size else None
        return Plain(method, target, headers, body, search)


def _not_plain(name: bytes, value: bytes) -> bool:
    """A header that makes a request aiohttp's to handle. `Connection: keep-alive` alone is plain: it
    says what HTTP/1.1 means anyway, and elasticsearch-py and requests send it with every request."""
    lowered = name.lower()
    if lowered != b"connection":
        return lowered in _NOT_PLAIN
    return any(token.strip().lower() != b"keep-alive" for token in value.split(b","))
