"""Online metrics per canary arm from joined UBI searches and clicks: point values, seeded bootstrap
intervals, the rerank - off difference, and the interleaving verdict with an exact sign test. Pure."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .ubi_records import SearchClicks

# Fewer searches than this in an arm, and its intervals would only describe noise.
MIN_SEARCHES = 20
RERANK_TEAM = "rerank"
ES_TEAM = "es"


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """One number the report gives per arm, and how to show it."""

    name: str
    label: str
    percent: bool = True


METRICS = (
    # clicked results over results shown
    Metric(name="ctr", label="click-through rate"),
    # of the searches with a click, the share whose first click was on the first result
    Metric(name="first_click_rate", label="first click on result 1"),
    # of the searches with a click, the mean reciprocal rank of the first (0 when it cannot be placed)
    Metric(name="mrr", label="MRR of the first click", percent=False),
    # of the searches that showed results, the share without any click
    Metric(name="abandonment", label="abandonment (no click)"),
    # the share of searches that showed no result
    Metric(name="zero_results", label="zero-result searches"),
    # the median time from the search to its first click
    Metric(name="seconds_to_first_click", label="median s to first click", percent=False),
)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the metrics read of one search, taken once so that resampling stays cheap."""

    shown: int
    clicks: int
    first_rank: int | None  # None: no click; 0: a click that could not be placed
    delay: float | None


def _facts(row: SearchClicks) -> _Facts:
    return _Facts(
        len(row.search.hit_ids),
        len(row.ranks),
        (row.ranks[0] or 0) if row.ranks else None,
        row.seconds_to_first_click,
    )


def _ratio(numerator: float, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _summarise(facts: Sequence[_Facts]) -> dict[str, float | None]:
    shown = clicks = with_results = abandoned = zero = clicked = first_on_top = 0
    reciprocal = 0.0
    delays: list[float] = []
    for fact in facts:
        shown += fact.shown
        clicks += fact.clicks
        if fact.shown:
            with_results += 1
            abandoned += fact.first_rank is None
        else:
            zero += 1
        if fact.first_rank is not None:
            clicked += 1
            first_on_top += fact.first_rank == 1
            reciprocal += 1.0 / fact.first_rank if fact.first_rank else 0.0
        if fact.delay is not None:
            delays.append(fact.delay)
    return {
        "ctr": _ratio(clicks, shown),
        "first_click_rate": _ratio(first_on_top, clicked),
        "mrr": _ratio(reciprocal, clicked),
        "abandonment": _ratio(abandoned, with_results),
        "zero_results": _ratio(zero, len(facts)),
        "seconds_to_first_click": statistics.median(delays) if delays else None,
    }


def metric_values(rows: Sequence[SearchClicks]) -> dict[str, float | None]:
    """Every metric of METRICS over these searches, by name (None where there is nothing to divide by)."""
    return _summarise([_facts(row) for row in rows])


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """A value with its 95% bootstrap interval (None where the data cannot give one)."""

    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmReport:
    """One canary arm: its searches and an estimate per metric name."""

    arm: str
    searches: int
    degraded: int
    enough: bool
    metrics: dict[str, Estimate]


@dataclass(frozen=True, slots=True, kw_only=True)
class InterleaveReport:
    """Interleaved searches credited by team: the reranker's wins, ties, losses, and the sign test."""

    searches: int
    no_clicks: int
    wins: int
    ties: int
    losses: int
    p_value: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OnlineReport:
    """The whole report: per arm, rerank - off per metric, and interleaving when present."""

    arms: dict[str, ArmReport]
    difference: dict[str, Estimate] | None
    interleave: InterleaveReport | None
    resamples: int
    seed: int


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


def _interval(samples: list[float]) -> tuple[float | None, float | None]:
    if not samples:
        return None, None
    samples.sort()
    return _percentile(samples, 0.025), _percentile(samples, 0.975)


def bootstrap(rows: Sequence[SearchClicks], resamples: int, rng: random.Random) -> dict[str, Estimate]:
    """Each metric with the 2.5/97.5 percentiles of its value over `resamples` resamples of the searches."""
    facts = [_facts(row) for row in rows]
    samples: dict[str, list[float]] = {metric.name: [] for metric in METRICS}
    for _ in range(resamples if facts else 0):
        for name, value in _summarise(rng.choices(facts, k=len(facts))).items():
            if value is not None:
                samples[name].append(value)
    values = _summarise(facts)
    return {
        name: Estimate(value=values[name], low=low, high=high)
        for name in samples
        for low, high in [_interval(samples[name])]
    }


def bootstrap_difference(
    treated: Sequence[SearchClicks], control: Sequence[SearchClicks], resamples: int, rng: random.Random
) -> dict[str, Estimate]:
    """Each metric's treated - control with an interval from resampling both arms independently."""
    treated_facts, control_facts = [_facts(row) for row in treated], [_facts(row) for row in control]
    samples: dict[str, list[float]] = {metric.name: [] for metric in METRICS}
    for _ in range(resamples if treated_facts and control_facts else 0):
        a = _summarise(rng.choices(treated_facts, k=len(treated_facts)))
        b = _summarise(rng.choices(control_facts, k=len(control_facts)))
        for name in samples:
            a_value, b_value = a[name], b[name]
            if a_value is not None and b_value is not None:
                samples[name].append(a_value - b_value)
    a, b = _summarise(treated_facts), _summarise(control_facts)
    estimates: dict[str, Estimate] = {}
    for name in samples:
        a_value, b_value = a[name], b[name]
        low, high = _interval(samples[name])
        value = None if a_value is None or b_value is None else a_value - b_value
        estimates[name] = Estimate(value=value, low=low, high=high)
    return estimates


def sign_test(wins: int, losses: int) -> float | None:
    """Two-sided exact binomial (sign) test of wins against losses at p = 1/2; None without decisive pairs."""
    n = wins + losses
    if n == 0:
        return None
    tail: float = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def team_credit(row: SearchClicks) -> tuple[int, int]:
    """Clicks credited to the reranker's team and to Elasticsearch's team on an interleaved page."""
    teams = dict(zip(row.search.hit_ids, row.search.teams, strict=True))
    rerank = sum(1 for object_id in row.clicked_ids if teams.get(object_id) == RERANK_TEAM)
    es = sum(1 for object_id in row.clicked_ids if teams.get(object_id) == ES_TEAM)
    return rerank, es


def interleave_verdict(rows: Sequence[SearchClicks]) -> InterleaveReport:
    """Per interleaved search with teams, the team with more credited clicks wins; no-click searches are
    counted apart and left out of the sign test like ties."""
    wins = ties = losses = no_clicks = 0
    interleaved = [row for row in rows if row.search.teams]
    for row in interleaved:
        rerank, es = team_credit(row)
        if rerank == es == 0:
            no_clicks += 1
        elif rerank > es:
            wins += 1
        elif rerank < es:
            losses += 1
        else:
            ties += 1
    return InterleaveReport(
        searches=len(interleaved),
        no_clicks=no_clicks,
        wins=wins,
        ties=ties,
        losses=losses,
        p_value=sign_test(wins, losses),
    )


def by_arm(rows: Sequence[SearchClicks]) -> dict[str, list[SearchClicks]]:
    """The searches grouped by the arm the proxy recorded, arms in first-seen order."""
    arms: dict[str, list[SearchClicks]] = {}
    for row in rows:
        arms.setdefault(row.search.arm, []).append(row)
    return arms


def online_report(
    rows: Sequence[SearchClicks],
    *,
    resamples: int = 1000,
    seed: int = 0,
    min_searches: int = MIN_SEARCHES,
) -> OnlineReport:
    """Everything the `online-report` command prints, from joined searches; same seed, same intervals."""
    rng = random.Random(seed)
    arms: dict[str, ArmReport] = {}
    grouped: Mapping[str, list[SearchClicks]] = by_arm(rows)
    for arm, arm_rows in grouped.items():
        enough = len(arm_rows) >= min_searches
        arms[arm] = ArmReport(
            arm=arm,
            searches=len(arm_rows),
            degraded=sum(1 for row in arm_rows if row.search.outcome == "degraded"),
            enough=enough,
            metrics=bootstrap(arm_rows, resamples if enough else 0, rng),
        )
    difference = None
    if all(arm in arms and arms[arm].enough for arm in ("rerank", "off")):
        difference = bootstrap_difference(grouped["rerank"], grouped["off"], resamples, rng)
    interleaved = grouped.get("interleave", [])
    return OnlineReport(
        arms=arms,
        difference=difference,
        interleave=interleave_verdict(interleaved) if interleaved else None,
        resamples=resamples,
        seed=seed,
    )
