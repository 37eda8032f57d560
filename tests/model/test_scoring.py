"""The rerank step with in-process fake model clients: each failure degrades, on time, with its reason."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from es_rerank_proxy.config import BreakerConfig, CacheConfig, RerankerConfig
from es_rerank_proxy.errors import RerankerBadResponse, RerankerTimeout, RerankerUnavailable
from es_rerank_proxy.model.scoring import ScoreClient, ScoreDoc, Scorer

URL_A = "http://model-a:8000"
URL_B = "http://model-b:8000"


@dataclass
class Call:
    url: str
    query: str
    documents: list[str]
    timeout_s: float


Handler = Callable[[Call], Awaitable[list[float]]]


def model_score(text: str) -> float:
    return (sum(map(ord, text)) % 997) / 997


async def answer(call: Call) -> list[float]:
    return [model_score(text) for text in call.documents]


def fail(exc: Exception) -> Handler:
    async def handler(call: Call) -> list[float]:
        raise exc

    return handler


def after(seconds: float, then: Handler = answer) -> Handler:
    async def handler(call: Call) -> list[float]:
        await asyncio.sleep(seconds)
        return await then(call)

    return handler


async def hang(call: Call) -> list[float]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def script(*handlers: Handler) -> Handler:
    """The n-th call gets the n-th handler (the last one repeats)."""
    queue = list(handlers)

    async def handler(call: Call) -> list[float]:
        current = queue.pop(0) if len(queue) > 1 else queue[0]
        return await current(call)

    return handler


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for `condition` (a fixed sleep loses the race when a loaded machine stalls this loop)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def unavailable(status: int | None) -> RerankerUnavailable:
    exc = RerankerUnavailable(f"status {status}")
    exc.status = status  # type: ignore[attr-defined]  # the client's exceptions carry it
    return exc


@dataclass
class FakeClient:
    """Records every call; `handlers` by URL (falling back to `default`) decide the answer."""

    default: Handler = answer
    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    async def score(self, url: str, query: str, documents: Sequence[str], timeout_s: float) -> list[float]:
        call = Call(url, query, list(documents), timeout_s)
        self.calls.append(call)
        return await self.handlers.get(url, self.default)(call)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(**changes: Any) -> RerankerConfig:
    values: dict[str, Any] = {
        "url": (URL_A,),
        "retries": 0,
        "max_concurrency": 8,
        "breaker": BreakerConfig(failures=3, window_s=10.0, open_s=5.0),
        "cache": CacheConfig(max_entries=1000, ttl_s=600.0),
    }
    values.update(changes)
    return RerankerConfig(**values)


MakeScorer = Callable[..., Scorer]


@pytest.fixture
async def make_scorer() -> AsyncIterator[MakeScorer]:
    made: list[Scorer] = []

    def make(client: ScoreClient, cfg: RerankerConfig | None = None, **kwargs: Any) -> Scorer:
        kwargs.setdefault("rng", random.Random(7))
        scorer = Scorer(client, cfg or config(), model_key="qwen3|test", **kwargs)
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        await scorer.aclose()


def docs(*ids: str, suffix: str = "") -> list[ScoreDoc]:
    return [ScoreDoc(doc_id=i, text=f"text of {i}{suffix}") for i in ids]


# --- scores and the cache -----------------------------------------------------------------------------


async def test_scores_are_keyed_by_position_in_docs(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    outcome = await make_scorer(client).score("q", docs("a", "b", "c"), 1.0)
    assert outcome.reason is None and not outcome.degraded
    assert outcome.scores == {i: model_score(f"text of {d}") for i, d in enumerate("abc")}
    assert (outcome.cache_hits, outcome.cache_misses, outcome.model_calls) == (0, 3, 1)
    assert client.calls[0].documents == ["text of a", "text of b", "text of c"]


async def test_repeated_query_makes_no_model_call(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    scorer = make_scorer(client)
    first = await scorer.score("q", docs("a", "b"), 1.0)
    second = await scorer.score("q", docs("a", "b"), 0.0)  # a fully cached request needs no budget
    assert len(client.calls) == 1
    assert second.scores == first.scores
    assert (second.cache_hits, second.cache_misses, second.model_calls) == (2, 0, 0)


async def test_changed_doc_text_is_scored_again(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    scorer = make_scorer(client)
    await scorer.score("q", docs("a", "b"), 1.0)
    outcome = await scorer.score("q", [ScoreDoc("a", "text of a"), ScoreDoc("b", "new text of b")], 1.0)
    assert [c.documents for c in client.calls] == [["text of a", "text of b"], ["new text of b"]]
    assert outcome.scores == {0: model_score("text of a"), 1: model_score("new text of b")}


async def test_same_docs_for_another_query_are_scored_again(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    scorer = make_scorer(client)
    await scorer.score("q", docs("a"), 1.0)
    await scorer.score("other query", docs("a"), 1.0)
    assert [c.query for c in client.calls] == ["q", "other query"]


async def test_page_two_overlap_sends_only_missing_docs(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    scorer = make_scorer(client)
    await scorer.score("q", docs("a", "b", "c", "d"), 1.0)
    outcome = await scorer.score("q", docs("c", "d", "e", "f"), 1.0)
    assert client.calls[1].documents == ["text of e", "text of f"]
    assert (outcome.cache_hits, outcome.cache_misses) == (2, 2)
    assert outcome.scores == {i: model_score(f"text of {d}") for i, d in enumerate("cdef")}


async def test_duplicate_docs_in_one_request_are_sent_once(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    outcome = await make_scorer(client).score("q", docs("a", "b", "a"), 1.0)
    assert client.calls[0].documents == ["text of a", "text of b"]
    assert outcome.scores is not None and outcome.scores[0] == outcome.scores[2]


async def test_no_docs_make_no_call(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    outcome = await make_scorer(client).score("q", [], 1.0)
    assert outcome.scores == {} and outcome.reason is None and not client.calls


async def test_disabled_cache_calls_every_time(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    scorer = make_scorer(client, config(cache=CacheConfig(max_entries=0)))
    await scorer.score("q", docs("a"), 1.0)
    await scorer.score("q", docs("a"), 1.0)
    assert len(client.calls) == 2


# --- failure modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (fail(unavailable(None)), "unavailable"),
        (fail(unavailable(500)), "unavailable"),
        (fail(unavailable(503)), "unavailable"),
        (fail(RerankerTimeout("slow")), "timeout"),
        (fail(RerankerBadResponse("not json")), "bad_response"),
        (fail(ValueError("client bug")), "proxy_error"),
        (answer, None),
    ],
    ids=["refused", "500", "503", "client-timeout", "bad-json", "client-bug", "ok"],
)
async def test_each_failure_mode_degrades_with_its_reason(
    make_scorer: MakeScorer, handler: Handler, reason: str | None
) -> None:
    outcome = await make_scorer(FakeClient(default=handler)).score("q", docs("a", "b"), 1.0)
    assert outcome.reason == reason
    assert (outcome.scores is None) == (reason is not None)


@pytest.mark.parametrize(
    "values",
    [[0.5], [0.5, 0.5, 0.5], [0.5, math.nan], [math.inf, 0.1]],
    ids=["too-few", "too-many", "nan", "inf"],
)
async def test_malformed_scores_are_a_bad_response(make_scorer: MakeScorer, values: list[float]) -> None:
    async def handler(call: Call) -> list[float]:
        return values

    outcome = await make_scorer(FakeClient(default=handler)).score("q", docs("a", "b"), 1.0)
    assert outcome.reason == "bad_response"


async def test_all_breakers_open_degrades_at_once_without_a_call(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=fail(unavailable(500)))
    cfg = config(url=(URL_A, URL_B), breaker=BreakerConfig(failures=1, window_s=10, open_s=5))
    scorer = make_scorer(client, cfg, clock=FakeClock())
    for query in ("q1", "q2"):
        assert (await scorer.score(query, docs("a"), 1.0)).reason == "unavailable"
    assert scorer.breaker_states() == {URL_A: "open", URL_B: "open"}
    outcome = await scorer.score("q3", docs("a"), 1.0)
    assert outcome.reason == "circuit_open"
    assert outcome.model_calls == 0 and len(client.calls) == 2


async def test_half_open_sends_one_probe_and_refuses_the_rest(make_scorer: MakeScorer) -> None:
    clock = FakeClock()
    release = asyncio.Event()

    async def probe(call: Call) -> list[float]:
        await release.wait()
        return await answer(call)

    client = FakeClient(default=script(fail(unavailable(500)), probe))
    cfg = config(breaker=BreakerConfig(failures=1, window_s=10, open_s=5))
    scorer = make_scorer(client, cfg, clock=clock)
    await scorer.score("q0", docs("a"), 1.0)
    clock.advance(5)
    probing = asyncio.create_task(scorer.score("q1", docs("a"), 1.0))
    await until(lambda: len(client.calls) == 2)
    refused = await scorer.score("q2", docs("a"), 1.0)
    release.set()
    assert refused.reason == "circuit_open"
    assert (await probing).reason is None
    assert scorer.breaker_states() == {URL_A: "closed"}


async def test_overloaded_degrades_at_once_instead_of_queueing(make_scorer: MakeScorer) -> None:
    release = asyncio.Event()

    async def slow(call: Call) -> list[float]:
        await release.wait()
        return await answer(call)

    scorer = make_scorer(FakeClient(default=slow), config(max_concurrency=1))
    busy = asyncio.create_task(scorer.score("q1", docs("a"), 60.0))
    await until(lambda: scorer.in_flight == 1)
    started = time.monotonic()
    outcome = await scorer.score("q2", docs("a"), 60.0)
    assert outcome.reason == "overloaded"
    assert time.monotonic() - started < 5.0, "not queued behind the busy call (held until released)"
    release.set()
    assert (await busy).reason is None
    assert scorer.in_flight == 0


async def test_zero_budget_degrades_with_timeout_without_a_call(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    outcome = await make_scorer(client).score("q", docs("a"), 0.0)
    assert outcome.reason == "timeout" and not client.calls


# --- the budget (real time, generous bounds: a loaded machine stalls this loop) -------------------------


async def test_hang_past_budget_returns_within_budget(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=hang)
    scorer = make_scorer(client, fill_grace_s=10.0)
    started = time.monotonic()
    outcome = await scorer.score("q", docs("a", "b"), 0.1)
    elapsed = time.monotonic() - started
    assert outcome.reason == "timeout"
    assert 0.09 <= elapsed < 0.1 + 2.0, "at the budget, long before the 10 s grace"
    assert client.calls[0].timeout_s == pytest.approx(0.1, abs=0.02)


async def test_hard_cap_stops_a_hung_call_after_the_grace(make_scorer: MakeScorer) -> None:
    scorer = make_scorer(
        FakeClient(default=hang), config(breaker=BreakerConfig(failures=1)), fill_grace_s=0.05
    )
    assert (await scorer.score("q", docs("a"), 0.05)).reason == "timeout"
    assert scorer.in_flight == 1  # still allowed to answer for the cache
    await until(lambda: scorer.in_flight == 0)  # the hung call is cut off (it would hang forever)
    assert scorer.breaker_states() == {URL_A: "open"}


async def test_late_answer_within_grace_fills_the_cache(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=after(0.3))
    scorer = make_scorer(client, config(breaker=BreakerConfig(failures=1)), fill_grace_s=30.0)
    assert (await scorer.score("q", docs("a"), 0.05)).reason == "timeout"
    await until(lambda: scorer.in_flight == 0)  # the late answer has come
    outcome = await scorer.score("q", docs("a"), 0.05)
    assert outcome.reason is None and outcome.cache_hits == 1 and len(client.calls) == 1
    # Answering after the budget still counts against the server's health.
    assert scorer.breaker_states() == {URL_A: "open"}


async def test_late_answer_after_grace_is_dropped(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=after(10.0))
    scorer = make_scorer(client, fill_grace_s=0.01)
    assert (await scorer.score("q", docs("a"), 0.03)).reason == "timeout"
    await until(lambda: scorer.in_flight == 0)  # cut off at the grace, long before its answer
    assert (await scorer.score("q", docs("a"), 0.03)).reason == "timeout"
    assert len(client.calls) == 2


async def test_cancelling_the_caller_propagates(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=hang)
    scorer = make_scorer(client)
    task = asyncio.create_task(scorer.score("q", docs("a"), 5.0))
    await until(lambda: bool(client.calls))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- retries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "calls"),
    [
        (unavailable(None), 3),
        (unavailable(502), 3),
        (unavailable(503), 3),
        (unavailable(504), 3),
        (unavailable(500), 1),
        (unavailable(400), 1),
        (RerankerBadResponse("bad"), 1),
        (RerankerTimeout("slow"), 1),
    ],
    ids=["refused", "502", "503", "504", "500", "400", "bad_response", "timeout"],
)
async def test_only_transient_failures_are_retried(
    make_scorer: MakeScorer, exc: Exception, calls: int
) -> None:
    client = FakeClient(default=fail(exc))
    outcome = await make_scorer(client, config(retries=2)).score("q", docs("a"), 2.0)
    assert outcome.reason == exc.reason  # type: ignore[attr-defined]
    assert len(client.calls) == calls == outcome.model_calls


async def test_retry_after_503_succeeds(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=script(fail(unavailable(503)), answer))
    outcome = await make_scorer(client, config(retries=1)).score("q", docs("a"), 1.0)
    assert outcome.reason is None and outcome.model_calls == 2


async def test_retries_never_run_past_the_budget(make_scorer: MakeScorer) -> None:
    # Each attempt spends 6 s of a 20 s budget on the scorer's clock, however slow this machine is; the
    # real time is only the backoff sleeps (a few ms), far from the 20 s the outer timeout allows.
    clock = FakeClock()

    async def slow_503(call: Call) -> list[float]:
        clock.advance(6.0)
        raise unavailable(503)

    client = FakeClient(default=slow_503)
    scorer = make_scorer(client, config(retries=50), clock=clock)
    outcome = await scorer.score("q", docs("a"), 20.0)
    assert outcome.reason == "unavailable"
    assert 2 <= len(client.calls) <= 4, "retried, but 50 retries do not fit in the budget"
    assert all(call.timeout_s > 0 for call in client.calls), "no attempt started after the budget"


@pytest.mark.parametrize(("spent_s", "calls"), [(0.05, 2), (0.085, 1)])
async def test_retry_gets_the_remaining_budget_and_needs_a_floor_of_it(
    make_scorer: MakeScorer, spent_s: float, calls: int
) -> None:
    clock = FakeClock()

    async def slow_503(call: Call) -> list[float]:
        clock.advance(spent_s)
        raise unavailable(503)

    client = FakeClient(default=slow_503)
    outcome = await make_scorer(client, config(retries=5), clock=clock).score("q", docs("a"), 0.1)
    assert outcome.reason == "unavailable"
    assert [c.timeout_s for c in client.calls] == pytest.approx([0.1, 0.05][:calls])


async def test_retry_goes_to_the_other_url(make_scorer: MakeScorer) -> None:
    client = FakeClient(handlers={URL_A: fail(unavailable(None))})
    scorer = make_scorer(client, config(url=(URL_A, URL_B), retries=1))
    outcome = await scorer.score("q", docs("a"), 1.0)
    assert outcome.reason is None
    assert [c.url for c in client.calls] == [URL_A, URL_B]


async def test_first_retry_waits_a_backoff_after_the_first_failure(make_scorer: MakeScorer) -> None:
    # The first backoff is 10 ms with jitter, at least 5 ms: a retry sent at once would hammer a server
    # that just said 503. Only a lower bound is asserted, which no slow machine can break.
    started: list[float] = []

    async def record_then(call: Call, then: Handler) -> list[float]:
        started.append(time.monotonic())
        return await then(call)

    first = script(fail(unavailable(503)), answer)
    client = FakeClient(default=lambda call: record_then(call, first))
    outcome = await make_scorer(client, config(retries=1)).score("q", docs("a"), 5.0)
    assert outcome.reason is None and outcome.model_calls == 2
    assert started[1] - started[0] >= 0.004


# --- several URLs -------------------------------------------------------------------------------------


async def test_one_url_down_calls_succeed_via_the_other_and_its_breaker_opens(
    make_scorer: MakeScorer,
) -> None:
    changes: list[tuple[str, str, str]] = []
    client = FakeClient(handlers={URL_A: fail(unavailable(None))})
    cfg = config(url=(URL_A, URL_B), retries=1, breaker=BreakerConfig(failures=2, window_s=10, open_s=30))
    scorer = make_scorer(client, cfg, clock=FakeClock(), on_breaker_change=lambda *c: changes.append(c))
    outcomes = [await scorer.score(f"q{i}", docs("a"), 1.0) for i in range(8)]
    assert all(o.reason is None for o in outcomes)
    assert scorer.breaker_states() == {URL_A: "open", URL_B: "closed"}
    assert changes == [(URL_A, "closed", "open")]
    assert [c.url for c in client.calls].count(URL_A) == 2
    assert [c.url for c in client.calls[-3:]] == [URL_B] * 3


async def test_calls_are_spread_over_healthy_urls(make_scorer: MakeScorer) -> None:
    client = FakeClient()
    scorer = make_scorer(client, config(url=(URL_A, URL_B)))
    for i in range(6):
        await scorer.score(f"q{i}", docs("a"), 1.0)
    assert [c.url for c in client.calls] == [URL_A, URL_B] * 3


# --- single-flight ------------------------------------------------------------------------------------


async def test_identical_concurrent_requests_share_one_model_call(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=after(0.02))
    scorer = make_scorer(client)
    first, second = await asyncio.gather(
        scorer.score("q", docs("a", "b"), 1.0), scorer.score("q", docs("b", "a"), 1.0)
    )
    assert len(client.calls) == 1
    assert first.scores == {0: second.scores[1], 1: second.scores[0]}  # type: ignore[index]
    assert sorted([first.model_calls, second.model_calls]) == [0, 1]


async def test_shared_failure_degrades_every_waiter(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=after(0.02, fail(RerankerBadResponse("x"))))
    scorer = make_scorer(client)
    outcomes = await asyncio.gather(*(scorer.score("q", docs("a"), 1.0) for _ in range(3)))
    assert [o.reason for o in outcomes] == ["bad_response"] * 3
    assert len(client.calls) == 1


# --- lifecycle and counters ---------------------------------------------------------------------------


async def test_aclose_leaves_no_pending_tasks() -> None:
    before = asyncio.all_tasks()
    scorer = Scorer(FakeClient(default=hang), config(), model_key="k", fill_grace_s=60.0)
    assert (await scorer.score("q", docs("a"), 0.02)).reason == "timeout"
    assert scorer.in_flight == 1
    await scorer.aclose()
    assert asyncio.all_tasks() - before == set()
    assert scorer.in_flight == 0
    outcome = await scorer.score("q2", docs("a"), 1.0)
    assert outcome.reason == "unavailable" and scorer.in_flight == 0


async def test_stats_count_hits_misses_calls_and_degrades(make_scorer: MakeScorer) -> None:
    client = FakeClient(default=script(answer, answer, fail(RerankerBadResponse("x"))))
    scorer = make_scorer(client)
    await scorer.score("q", docs("a", "b"), 1.0)
    await scorer.score("q", docs("b", "c"), 1.0)
    await scorer.score("q", docs("d"), 1.0)
    stats = scorer.stats
    assert (stats.cache_hits, stats.cache_misses, stats.model_calls) == (1, 4, 3)
    assert stats.degraded == {"bad_response": 1}
