"""What running one search request gives the pipeline: an answer to serialise, or why there is none."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from ..errors import UpstreamError
from .plan import Bypass


@dataclass(frozen=True, slots=True)
class EsAnswer:
    """Elasticsearch answered the rewritten request with an error: the client gets it unchanged."""

    status: int
    headers: CIMultiDictProxy[str]
    payload: bytes

    def __init__(self, status: int, headers: CIMultiDictProxy[str], payload: bytes) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "payload", payload)


@dataclass(frozen=True, slots=True)
class Failed:
    error: UpstreamError

    def __init__(self, error: UpstreamError) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "error", error)


@dataclass(frozen=True, slots=True)
class Done:
    """A reranked (or degraded) answer, ready to serialise."""

    headers: CIMultiDictProxy[str]
    body: dict[str, object]
    outcomes: tuple[str, ...]
    reasons: tuple[str, ...]
    teams: tuple[tuple[str, ...] | None, ...] = ()  # per search, when interleaved

    def __init__(
        self,
        headers: CIMultiDictProxy[str],
        body: dict[str, object],
        outcomes: tuple[str, ...],
        reasons: tuple[str, ...],
        teams: tuple[tuple[str, ...] | None, ...] = (),
    ) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "outcomes", outcomes)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "teams", teams)


Result = Bypass | EsAnswer | Failed | Done
