"""Online metrics per canary arm from joined UBI searches and clicks: point values, seeded bootstrap
intervals, the rerank - off difference, and the interleaving verdict with an exact sign test. Pure."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .ubi_records import SearchClicks

# Fewer searches than this in an arm, and its intervals would only describe noise.
MIN_SEARCHES = 20
RERANK_TEAM = "rerank"
ES_TEAM = "es"


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """How one number is computed over a list of searches, and what it means."""

    name: str
    label: str
    compute: Callable[[Sequence[SearchClicks]], float | None]
    percent: bool = True


def _shown(rows: Sequence[SearchClicks]) -> list[SearchClicks]:
    return [row for row in rows if row.search.hit_ids]


def _clicked(rows: Sequence[SearchClicks]) -> list[SearchClicks]:
    return [row for row in rows if row.clicked]


def _share(rows: Sequence[SearchClicks], test: Callable[[SearchClicks], bool]) -> float | None:
    return sum(1 for row in rows if test(row)) / len(rows) if rows else None


def click_through_rate(rows: Sequence[SearchClicks]) -> float | None:
    """Clicked results over results shown."""
    shown = sum(len(row.search.hit_ids) for row in rows)
    return sum(len(row.ranks) for row in rows) / shown if shown else None


def first_click_rate(rows: Sequence[SearchClicks]) -> float | None:
    """Of the searches with a click, the share whose first click was on the first result."""
    return _share(_clicked(rows), lambda row: row.ranks[0] == 1)


def first_click_mrr(rows: Sequence[SearchClicks]) -> float | None:
    """Of the searches with a click, the mean reciprocal rank of the first click (0 when not placeable)."""
    clicked = _clicked(rows)
    if not clicked:
        return None
    return sum(1.0 / row.ranks[0] if row.ranks[0] else 0.0 for row in clicked) / len(clicked)


def abandonment_rate(rows: Sequence[SearchClicks]) -> float | None:
    """Of the searches that showed results, the share without any click."""
    return _share(_shown(rows), lambda row: not row.clicked)


def zero_result_rate(rows: Sequence[SearchClicks]) -> float | None:
    """The share of searches that showed no result."""
    return _share(rows, lambda row: not row.search.hit_ids)


def median_seconds_to_first_click(rows: Sequence[SearchClicks]) -> float | None:
    """The median time from the search to its first click, over searches with a click."""
    delays = [row.seconds_to_first_click for row in rows if row.seconds_to_first_click is not None]
    return statistics.median(delays) if delays else None


METRICS = (
    Metric(name="ctr", label="click-through rate", compute=click_through_rate),
    Metric(name="first_click_rate", label="first click on result 1", compute=first_click_rate),
    Metric(name="mrr", label="MRR of the first click", compute=first_click_mrr, percent=False),
    Metric(name="abandonment", label="abandonment (no click)", compute=abandonment_rate),
    Metric(name="zero_results", label="zero-result searches", compute=zero_result_rate),
    Metric(
        name="seconds_to_first_click",
        label="median s to first click",
        compute=median_seconds_to_first_click,
        percent=False,
    ),
)


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


def bootstrap(
    rows: Sequence[SearchClicks], metrics: Sequence[Metric], resamples: int, rng: random.Random
) -> dict[str, Estimate]:
    """Each metric with the 2.5/97.5 percentiles of its value over `resamples` resamples of the searches."""
    samples: dict[str, list[float]] = {metric.name: [] for metric in metrics}
    for _ in range(resamples if rows else 0):
        resample = rng.choices(rows, k=len(rows))
        for metric in metrics:
            value = metric.compute(resample)
            if value is not None:
                samples[metric.name].append(value)
    return {
        metric.name: Estimate(value=metric.compute(rows), low=low, high=high)
        for metric in metrics
        for low, high in [_interval(samples[metric.name])]
    }


def bootstrap_difference(
    treated: Sequence[SearchClicks],
    control: Sequence[SearchClicks],
    metrics: Sequence[Metric],
    resamples: int,
    rng: random.Random,
) -> dict[str, Estimate]:
    """Each metric's treated - control with an interval from resampling both arms independently."""
    samples: dict[str, list[float]] = {metric.name: [] for metric in metrics}
    for _ in range(resamples if treated and control else 0):
        resampled_treated = rng.choices(treated, k=len(treated))
        resampled_control = rng.choices(control, k=len(control))
        for metric in metrics:
            a, b = metric.compute(resampled_treated), metric.compute(resampled_control)
            if a is not None and b is not None:
                samples[metric.name].append(a - b)
    estimates: dict[str, Estimate] = {}
    for metric in metrics:
        a, b = metric.compute(treated), metric.compute(control)
        low, high = _interval(samples[metric.name])
        estimates[metric.name] = Estimate(value=None if a is None or b is None else a - b, low=low, high=high)
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
    metrics: Sequence[Metric] = METRICS,
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
            metrics=bootstrap(arm_rows, metrics, resamples if enough else 0, rng),
        )
    difference = None
    if all(arm in arms and arms[arm].enough for arm in ("rerank", "off")):
        difference = bootstrap_difference(grouped["rerank"], grouped["off"], metrics, resamples, rng)
    interleaved = grouped.get("interleave", [])
    return OnlineReport(
        arms=arms,
        difference=difference,
        interleave=interleave_verdict(interleaved) if interleaved else None,
        resamples=resamples,
        seed=seed,
    )
