"""scripts/bench_lib/wire.py (packets into a search's parts) and a smoke test of scripts/bench_wire.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
CLIENT, PROXY, WINDOW, MODEL = 50000, 8080, 9200, 8000
POOL = 50001  # the proxy's own connections upstream


@pytest.fixture(scope="module")
def bench_lib() -> Iterator[ModuleType]:
    """scripts/bench_lib, with its modules loaded as the package's attributes."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_lib
        from bench_lib import phases, services, wire  # noqa: F401

        yield bench_lib
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def wire(bench_lib: ModuleType) -> ModuleType:
    return bench_lib.wire


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "1764417600.123456 IP 127.0.0.1.50000 > 127.0.0.1.8080: Flags [P.], seq 1:201, ack 1, "
            "win 512, options [nop,nop,TS val 1 ecr 2], length 200: HTTP: POST /papers/_search HTTP/1.1",
            (1764417600.123456, 50000, 8080),
        ),
        # an ack carries no data: it says nothing about when either side worked
        ("1764417600.2 IP 127.0.0.1.8080 > 127.0.0.1.50000: Flags [.], ack 201, win 512, length 0", None),
        ("tcpdump: verbose output suppressed, use -v[v]... for full protocol decode", None),
        ("1764417600.2 IP6 ::1.50000 > ::1.8080: Flags [P.], seq 1:201, ack 1, length 200", None),
    ],
)
def test_parse_line_keeps_loopback_packets_that_carry_data(
    wire: ModuleType, line: str, expected: tuple[float, int, int] | None
) -> None:
    packet = wire.parse_line(line)
    assert (packet and (packet.time_s, packet.source_port, packet.destination_port)) == expected


def packets(wire: ModuleType, *rows: tuple[float, int, int]) -> list[object]:
    return [wire.Packet(t, source, destination) for t, source, destination in rows]


def test_exchanges_split_each_connection_at_its_next_request(wire: ModuleType) -> None:
    stream = packets(
        wire,
        (1.0, CLIENT, WINDOW),
        (1.1, CLIENT, WINDOW),  # the body, a second packet of the same request
        (1.5, WINDOW, CLIENT),
        (1.6, WINDOW, CLIENT),
        (2.0, CLIENT, WINDOW),  # the next request on the same connection
        (2.4, WINDOW, CLIENT),
        (3.0, POOL, WINDOW),  # another connection, never answered: left out
    )
    assert wire.exchanges(stream, WINDOW, 0.0, 10.0) == [
        wire.Exchange(1.0, 1.1, 1.5, 1.6),
        wire.Exchange(2.0, 2.0, 2.4, 2.4),
    ]
    # only what started within the window of time asked for
    assert wire.exchanges(stream, WINDOW, 1.9, 10.0) == [wire.Exchange(2.0, 2.0, 2.4, 2.4)]


def test_search_parts_are_the_gaps_between_the_proxys_packets(wire: ModuleType) -> None:
    stream = packets(
        wire,
        (10.000, CLIENT, PROXY),
        (10.001, POOL, WINDOW),  # pre: 1 ms
        (10.003, WINDOW, POOL),  # window: 2 ms
        (10.007, POOL + 1, MODEL),  # mid: 4 ms
        (10.027, MODEL, POOL + 1),  # model: 20 ms
        (10.035, PROXY, CLIENT),  # post: 8 ms
    )
    (search,) = wire.search_parts(
        wire.exchanges(stream, PROXY, 0, 99),
        wire.exchanges(stream, WINDOW, 0, 99),
        wire.exchanges(stream, MODEL, 0, 99),
    )
    parts = (search.pre, search.window, search.mid, search.model, search.post, search.own)
    assert parts == pytest.approx((0.001, 0.002, 0.004, 0.020, 0.008, 0.013))


def test_a_search_with_two_window_requests_is_left_out_not_guessed(wire: ModuleType) -> None:
    stream = packets(
        wire,
        (1.0, CLIENT, PROXY),
        (1.1, POOL, WINDOW),
        (1.2, WINDOW, POOL),
        (1.3, POOL, WINDOW),  # a second recall (a retry): which one the parts mean is unknowable
        (1.4, WINDOW, POOL),
        (1.5, POOL + 1, MODEL),
        (1.6, MODEL, POOL + 1),
        (1.7, PROXY, CLIENT),
    )
    client, window, model = (wire.exchanges(stream, port, 0, 99) for port in (PROXY, WINDOW, MODEL))
    assert len(window) == 2
    assert wire.search_parts(client, window, model) == []


def test_forward_parts_are_the_gaps_around_the_one_upstream_exchange(wire: ModuleType) -> None:
    stream = packets(
        wire,
        (1.000, CLIENT, PROXY),
        (1.001, POOL, WINDOW),  # pre: 1 ms
        (1.003, WINDOW, POOL),
        (1.005, PROXY, CLIENT),  # post: 2 ms
        (2.000, CLIENT, PROXY),  # forwarded twice (a retry): left out, not guessed
        (2.001, POOL, WINDOW),
        (2.002, WINDOW, POOL),
        (2.003, POOL + 1, WINDOW),
        (2.004, WINDOW, POOL + 1),
        (2.005, PROXY, CLIENT),
    )
    (forward,) = wire.forward_parts(
        wire.exchanges(stream, PROXY, 0, 99), wire.exchanges(stream, WINDOW, 0, 99)
    )
    assert (forward.pre, forward.post, forward.own) == pytest.approx((0.001, 0.002, 0.003))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([0.001], {"p50_ms": 1.0, "p90_ms": 1.0}),
        ([i / 1000 for i in range(1, 12)], {"p50_ms": 6.0, "p90_ms": 10.0}),
    ],
)
def test_summary_ms(wire: ModuleType, values: list[float], expected: dict[str, float] | None) -> None:
    assert wire.summary_ms(values) == expected


def skip_without_capture() -> None:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is missing (scripts/test installs it)")
    if os.geteuid() != 0:
        pytest.skip("tcpdump captures as root only")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_wire_reports_the_proxys_own_time_between_packets(tmp_path: Path) -> None:
    skip_without_capture()
    out = tmp_path / "wire.json"
    command = [sys.executable, str(SCRIPTS / "bench_wire.py"), "--pure", "--searches", "20"]
    result = subprocess.run(
        [*command, "--gap-ms", "5", "--json", str(out)], capture_output=True, text=True, timeout=380
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    # Searches one at a time: each one's packets are told apart, none is dropped as ambiguous.
    assert report["searches"] == report["applied"] == 20, report
    parts = report["wire"]
    assert all(parts[name]["p50_ms"] > 0 for name in ("pre", "window", "mid", "model", "post"))
    # The fake model's fixed 20 ms lies in the model exchange: the proxy's own parts are measured apart.
    assert parts["model"]["p50_ms"] >= 20
    assert "own = pre + mid + post" in result.stdout
    # The floor's searches are measured the same way, beside the proxy's, and compared.
    floor = report["floor"]
    assert floor["searches"] == 20 and floor["wire"]["model"]["p50_ms"] >= 20
    assert floor["own_ratio"] > 0
    assert "x the floor's" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_ab_measures_both_builds_in_turns_between_packets(tmp_path: Path) -> None:
    skip_without_capture()
    out = tmp_path / "ab.json"
    command = [sys.executable, str(SCRIPTS / "bench_ab.py"), "--a", "source", "--b", "source"]
    command += ["--requests", "doc", "--block", "20", "--rounds", "2", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    arms = json.loads(out.read_text())["arms"]
    # Two blocks of 20 per arm, each GET forwarded once: every one is told apart on the wire.
    assert [arms[arm]["count"] for arm in ("A", "B")] == [40, 40], arms
    assert all(arms[arm]["own"]["p50_ms"] > 0 for arm in ("A", "B"))
    assert "own B - A" in result.stdout


def _post(url: str, body: bytes) -> dict[str, object]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_floor_answers_the_page_the_proxy_answers(tmp_path: Path, bench_lib: ModuleType) -> None:
    # The wire phase's baseline is only a floor for the proxy if it does the same search work: the same
    # window cut to the same page, in the same order, with the same scores.
    services, phases = bench_lib.services, bench_lib.phases
    with (
        services.windowed_proxy(tmp_path, 0.0) as (window_url, model_url, proxy),
        services.floor(tmp_path, window_url, model_url) as floor_url,
    ):
        for query in ("protein folding", "climate model uncertainty"):
            body = phases.search_body(query, 7)
            path = f"/{phases.RECALL_INDEX}/_search"
            proxied, floored = _post(proxy.url + path, body), _post(floor_url + path, body)
            proxied_hits = proxied["hits"]["hits"]  # type: ignore[index]
            floored_hits = floored["hits"]["hits"]  # type: ignore[index]
            assert [h["_id"] for h in floored_hits] == [h["_id"] for h in proxied_hits]
            assert [h["_score"] for h in floored_hits] == pytest.approx(
                [h["_score"] for h in proxied_hits], rel=1e-9
            )
            assert [h["_source"] for h in floored_hits] == [h["_source"] for h in proxied_hits]
            assert len(floored_hits) == 7
            assert {k: v for k, v in floored.items() if k != "hits"} == {
                k: v for k, v in proxied.items() if k != "hits"
            }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_rates_prints_cpu_per_search_for_each_rate() -> None:
    command = [sys.executable, str(SCRIPTS / "bench_rates.py"), "--pure", "--rates", "20,40"]
    result = subprocess.run(
        [*command, "--seconds", "1", "--rounds", "1"], capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if "CPU/search" in line]
    assert [row[0] for row in rows] == ["20/s", "40/s"]
    for row in rows:
        assert int(row[1]) > 0 and float(row[row.index("CPU/search") + 1]) > 0, row
