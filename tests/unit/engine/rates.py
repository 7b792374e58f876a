"""Measuring a stream of arrival times: achieved rate and sliding-window maxima."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def achieved_rate(times: Sequence[float]) -> float:
    """Calls per second between the first and the last arrival: (n − 1) / span."""
    ordered = sorted(times)
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def max_in_window(times: Sequence[float], width: float) -> int:
    """The most arrivals in any half-open window [t, t + width)."""
    ordered = sorted(times)
    best = 0
    for index, start in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, start + width) - index)
    return best
