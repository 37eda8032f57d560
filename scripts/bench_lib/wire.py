"""Where a reranked search's time goes, read from loopback packet timestamps (tcpdump -tt -n).

Every figure a client or the proxy measures carries that program's own reading and waking. The kernel
stamps each packet as it crosses the loopback device, so the gaps between the proxy's packets are its own
time and nobody else's: from the client's request to the window request (`pre`), from the window's last
byte to the model request (`mid`), from the model's last byte to the answer (`post`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .load import percentile

# `1764417600.123456 IP 127.0.0.1.41234 > 127.0.0.1.9200: Flags [P.], seq 1:200, ..., length 199`
_LINE = re.compile(r"^(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): .*\blength (\d+)")


@dataclass(frozen=True, slots=True)
class Packet:
    time_s: float
    source_port: int
    destination_port: int


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request and its answer on one connection: first and last packet of each."""

    request_first: float
    request_last: float
    answer_first: float
    answer_last: float

    @property
    def span_s(self) -> float:
        return self.answer_last - self.request_first


PART_NAMES = ("pre", "window", "mid", "model", "post")


@dataclass(frozen=True, slots=True)
class SearchParts:
    """One search through the proxy, in seconds between packets."""

    pre: float  # client's last request byte -> the proxy's window request
    window: float  # the proxy's window exchange
    mid: float  # window's last byte -> the proxy's model request
    model: float  # the proxy's model exchange
    post: float  # model's last byte -> the proxy's first answer byte

    @property
    def own(self) -> float:
        return self.pre + self.mid + self.post


def parse_line(line: str) -> Packet | None:
    """A loopback IPv4 packet that carries data; None for anything else (acks, other lines)."""
    match = _LINE.match(line)
    if match is None or int(match.group(4)) == 0:
        return None
    return Packet(float(match.group(1)), int(match.group(2)), int(match.group(3)))


def exchanges(packets: Iterable[Packet], server_port: int, start_s: float, end_s: float) -> list[Exchange]:
    """The exchanges with the server on `server_port` between `start_s` and `end_s`, by start time.

    HTTP/1.1 without pipelining: on each connection a request starts after the previous answer, so a packet
    to the server after an answer packet begins the next exchange. Exchanges left unanswered are dropped.
    """
    open_by_port: dict[int, list[float]] = {}  # [req_first, req_last, answer_first, answer_last]
    done: list[list[float]] = []
    for packet in packets:
        if not start_s <= packet.time_s < end_s:
            continue
        if packet.destination_port == server_port:
            current = open_by_port.get(packet.source_port)
            if current is None or current[3] >= 0:
                current = [packet.time_s, packet.time_s, -1.0, -1.0]
                open_by_port[packet.source_port] = current
                done.append(current)
            else:
                current[1] = packet.time_s
        elif packet.source_port == server_port:
            current = open_by_port.get(packet.destination_port)
            if current is not None:
                if current[2] < 0:
                    current[2] = packet.time_s
                current[3] = packet.time_s
    answered = [Exchange(*times) for times in done if times[3] >= 0]
    return sorted(answered, key=lambda exchange: exchange.request_first)


def search_parts(
    client: Sequence[Exchange], window: Sequence[Exchange], model: Sequence[Exchange]
) -> list[SearchParts]:
    """Each client exchange with the one window and one model exchange the proxy made inside it.

    Searches sent one at a time make that unambiguous; a search with any other count (a retry, an
    overlap) is left out rather than guessed at.
    """
    parts = []
    for outer in client:
        inner_window, inner_model = _inside(outer, window), _inside(outer, model)
        if len(inner_window) != 1 or len(inner_model) != 1:
            continue
        (w,), (m,) = inner_window, inner_model
        parts.append(
            SearchParts(
                pre=w.request_first - outer.request_last,
                window=w.span_s,
                mid=m.request_first - w.answer_last,
                model=m.span_s,
                post=outer.answer_first - m.answer_last,
            )
        )
    return parts


@dataclass(frozen=True, slots=True)
class ForwardParts:
    """One request the proxy forwarded (a `_doc` GET, a bypassed search), in seconds between packets."""

    pre: float  # client's last request byte -> the proxy's request upstream
    post: float  # upstream's last answer byte -> the proxy's first answer byte

    @property
    def own(self) -> float:
        return self.pre + self.post


def forward_parts(client: Sequence[Exchange], upstream: Sequence[Exchange]) -> list[ForwardParts]:
    """Each client exchange with the one upstream exchange the proxy made inside it (others left out)."""
    parts = []
    for outer in client:
        inner = _inside(outer, upstream)
        if len(inner) == 1:
            parts.append(
                ForwardParts(
                    inner[0].request_first - outer.request_last, outer.answer_first - inner[0].answer_last
                )
            )
    return parts


def _inside(outer: Exchange, exchanges: Sequence[Exchange]) -> list[Exchange]:
    """The exchanges the proxy began while answering `outer`."""
    return [e for e in exchanges if outer.request_first <= e.request_first <= outer.answer_last]


def summary_ms(values: Sequence[float]) -> dict[str, float] | None:
    """p50 and p90 (nearest rank, as bench.py's) of seconds, in ms; None for no values."""
    if not values:
        return None
    return {f"p{pct}_ms": round(percentile(values, pct) * 1000, 3) for pct in (50, 90)}
