"""Send windows (SPEC §9.2), pure: when a campaign may send, as instants.

A window is open at instant `u` when `u`'s wall time in the window's zone falls on one of
its days, at or after `from` and before `to`. That definition is the one computed here,
from the zone's real offsets: on a spring-forward day a window inside the missing hour is
never open, on a fall-back day a window over the repeated hour is open twice (both
occurrences), and a window 08:00-20:00 is open 11, 12 or 13 real hours accordingly.
Several windows: their union. All instants are timezone-aware; results are in UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

DAY_SECONDS = 24 * 3600
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOUR = timedelta(hours=1)
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)
# How far ahead the next opening is looked for: windows repeat weekly, a year covers
# every zone rule change that matters to a run (its 12-hour cap or its campaign's end).
_HORIZON_DAYS = 371

Interval = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Window:
    """One weekly window: `days` (0 = Monday), local `start` and `end` seconds of the day
    (`end` may be 86400, the end of the day), in `zone`."""

    zone: ZoneInfo
    days: frozenset[int]
    start: int  # seconds after local midnight
    end: int  # seconds after local midnight, > start, at most 86400

    @classmethod
    def parse(cls, timezone_name: str, days: Sequence[str] | None, start: str, end: str
              ) -> Window:
        """A window from its JSON fields (validated by the API before)."""
        chosen = DAYS if days is None else days
        return cls(ZoneInfo(timezone_name), frozenset(DAYS.index(d) for d in chosen),
                   parse_clock(start), parse_clock(end))


def from_stored(stored: Sequence[Mapping[str, Any]] | None) -> tuple[Window, ...]:
    """The windows of a campaign as stored (`campaigns.send_windows`); () means always open."""
    if not stored:
        return ()
    return tuple(Window.parse(w["timezone"], w.get("days"), w["from"], w["to"]) for w in stored)


def parse_clock(text: str) -> int:
    """`HH:MM` or `HH:MM:SS` (00:00 to 24:00) as seconds after midnight; ValueError
    otherwise. (Seconds let an operator, or a test, open a window for a few seconds.)"""
    parts = text.split(":")
    if not (len(parts) in (2, 3) and all(len(p) == 2 and p.isdigit() for p in parts)):
        raise ValueError(f"{text!r} is not HH:MM (or HH:MM:SS)")
    hours, minutes, seconds = (int(p) for p in (*parts, "00")[:3])
    value = hours * 3600 + minutes * 60 + seconds
    if minutes > 59 or seconds > 59 or value > DAY_SECONDS:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 24:00)")
    return value


def open_intervals(windows: Iterable[Window], start: datetime, end: datetime) -> list[Interval]:
    """The open instants in [start, end), as sorted, disjoint, merged intervals (UTC)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        return []
    pieces: list[Interval] = []
    for window in windows:
        first = start.astimezone(window.zone).date() - _DAY
        last = end.astimezone(window.zone).date() + _DAY
        day = first
        while day <= last:
            if day.weekday() in window.days:
                for a, b in _day_intervals(window, day):
                    a, b = max(a, start), min(b, end)
                    if a < b:
                        pieces.append((a, b))
            day += _DAY
    return _merge(pieces)


def open_seconds(windows: Sequence[Window], start: datetime, end: datetime) -> float:
    """Seconds of open time in [start, end)."""
    return sum((b - a).total_seconds() for a, b in open_intervals(windows, start, end))


def open_micros(windows: Sequence[Window], start: datetime, end: datetime) -> int:
    """Microseconds of open time in [start, end), exactly."""
    return sum((b - a) // timedelta(microseconds=1)
               for a, b in open_intervals(windows, start, end))


def open_until(windows: Sequence[Window], at: datetime) -> datetime | None:
    """When `at` is open, the end of its open interval (when sending must stop; capped at a
    week ahead, when the caller looks again); None when `at` is closed."""
    horizon = at + 7 * _DAY
    intervals = open_intervals(windows, at, horizon)
    if not intervals or intervals[0][0] != at.astimezone(UTC):
        return None
    return intervals[0][1]


def next_opening(windows: Sequence[Window], at: datetime) -> datetime | None:
    """`at` itself when open, else the next instant a window opens (None within a year)."""
    horizon = at + _HORIZON_DAYS * _DAY
    step = at
    while step < horizon:
        chunk = min(step + 14 * _DAY, horizon)
        intervals = open_intervals(windows, step, chunk)
        if intervals:
            return intervals[0][0]
        step = chunk
    return None


def _day_intervals(window: Window, day: date) -> list[Interval]:
    """The instants whose local date is `day` and local time in [start, end)."""
    zone = window.zone
    day_start = _first_instant_at_or_after(zone, datetime.combine(day, time()))
    day_end = _first_instant_at_or_after(zone, datetime.combine(day + _DAY, time()))
    result: list[Interval] = []
    for a, b, offset in _segments(zone, day_start, day_end):
        # In a segment the offset is constant: local = utc + offset, monotone.
        local_day = datetime.combine(day, time(), tzinfo=UTC)
        lo = local_day + timedelta(seconds=window.start) - offset
        hi = local_day + timedelta(seconds=window.end) - offset
        lo, hi = max(lo, a), min(hi, b)
        if lo < hi:
            result.append((lo, hi))
    return result


def _first_instant_at_or_after(zone: ZoneInfo, local: datetime) -> datetime:
    """The first instant whose wall time in `zone` is at or after the naive `local`.

    An existing (or repeated) wall time: its first occurrence. A missing one (in a
    spring-forward gap): the instant of the transition, where the wall clock jumps past it.
    """
    early = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    late = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    first = min(early, late)
    if _local(zone, first) == local:
        return first
    # In a gap: the transition lies between the two readings; find it to the second.
    lo, hi = first, max(early, late)
    while hi - lo > _SECOND:
        mid = lo + (hi - lo) / 2
        if _local(zone, mid) >= local:
            hi = mid
        else:
            lo = mid
    return _exact_transition(zone, lo, hi)


def _segments(zone: ZoneInfo, start: datetime, end: datetime
              ) -> list[tuple[datetime, datetime, timedelta]]:
    """[start, end) cut at the zone's offset changes, each piece with its offset."""
    cuts = [start]
    probe = start
    while probe < end:
        nxt = min(probe + _HOUR, end)
        if _offset(zone, probe) != _offset(zone, nxt) and nxt != end:
            cuts.append(_change_between(zone, probe, nxt))
        elif nxt == end and _offset(zone, probe) != _offset(zone, end - _SECOND):
            cuts.append(_change_between(zone, probe, end - _SECOND))
        probe = nxt
    cuts.append(end)
    return [(a, b, _offset(zone, a)) for a, b in pairwise(cuts) if a < b]


def _change_between(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """The instant in (lo, hi] where the offset changes (offsets differ at lo and hi)."""
    before = _offset(zone, lo)
    while hi - lo > _SECOND:
        mid = lo + (hi - lo) / 2
        if _offset(zone, mid) == before:
            lo = mid
        else:
            hi = mid
    return _exact_transition(zone, lo, hi)


def _exact_transition(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """Transitions fall on whole seconds: the first whole second in (lo, hi] whose offset
    differs from lo's."""
    before = _offset(zone, lo)
    candidate = lo.replace(microsecond=0) + _SECOND
    while candidate < hi and _offset(zone, candidate) == before:
        candidate += _SECOND
    return candidate


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _local(zone: ZoneInfo, instant: datetime) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _merge(pieces: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for a, b in sorted(pieces):
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged
