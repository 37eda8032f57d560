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


@dataclass(frozen=True, slots=True)
class Failed:
    error: UpstreamError


@dataclass(frozen=True, slots=True)
class Done:
    """A reranked (or degraded) answer, ready to serialise."""

    headers: CIMultiDictProxy[str]
    body: dict[str, object]
    outcomes: tuple[str, ...]
    reasons: tuple[str, ...]
    teams: tuple[tuple[str, ...] | None, ...] = ()  # per search, when interleaved


Result = Bypass | EsAnswer | Failed | Done
