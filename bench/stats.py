"""Numbers from arrival times: percentiles, sliding-window maxima, achieved rates."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The `fraction` quantile (nearest rank) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p99/max (and count) of durations given in seconds, in milliseconds."""
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 3)

    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 0.50)),
        "p99_ms": ms(percentile(seconds, 0.99)),
        "max_ms": ms(max(seconds) if seconds else None),
        "min_ms": ms(min(seconds) if seconds else None),
    }


def max_in_window(times: Sequence[float], width: float) -> int:
    """The largest number of `times` in any half-open window [s, s + width)."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def achieved_rate(times: Sequence[float]) -> float | None:
    """Messages per second between the first and last arrival: (n - 1) / span."""
    if len(times) < 2:
        return None
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else None


def rate_profile(times: Sequence[float], configured: float) -> dict[str, float | int | None]:
    """What a rate-limited stream of arrivals looked like against its configured rate."""
    ordered = sorted(times)
    achieved = achieved_rate(ordered)
    steady = [t for t in ordered if t >= ordered[0] + 1.0] if ordered else []
    steady_rate = achieved_rate(steady)
    max_1s = max_in_window(ordered, 1.0)
    max_100ms = max_in_window(ordered, 0.1)
    first_second = sum(1 for t in ordered if t < ordered[0] + 1.0) if ordered else 0
    return {
        "configured_per_s": configured,
        "messages": len(ordered),
        "achieved_per_s": _round(achieved),
        "ratio": _round(achieved / configured if achieved else None, 5),
        "steady_ratio": _round(steady_rate / configured if steady_rate else None, 5),
        "first_second": first_second,
        "max_1s_window": max_1s,
        "max_100ms_window": max_100ms,
        # The goals of issue 6, as ratios: <= 1 means within the goal.
        "max_1s_over_goal": _round(max_1s / (configured + 1), 4),
        "max_100ms_over_goal": _round(max_100ms / (0.15 * configured + 1), 4),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, rounded; None when either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)



def loop_lag(before: dict[str, float], after: dict[str, float]) -> dict[str, Any] | None:
    """The daemon's loop-lag ticks between two scrapes of its histogram: how many, and how
    many ran later than each bucket's bound (over 0.005 s: the stalls longer than the
    pacer's 5 ms margin)."""
    if not after:
        return None
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    over = {le: int(total - (after[le] - before.get(le, 0.0)))
            for le in sorted((k for k in after if k != "+Inf"), key=float)}
    return {"ticks": int(total), "late_by_more_than_s": over}
