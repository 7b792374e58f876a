"""The send-rate curve as SVG coordinates (drawn server-side; the JS redraws from JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from daemon.store import Record

WIDTH, HEIGHT, PAD = 800, 240, 40


def curve_view(rows: list[Record], started: datetime, width: int, rate: float | None,
               shades: Sequence[tuple[datetime, datetime, str]] = (),
               until: datetime | None = None) -> dict[str, Any]:
    """Points (seconds since start, calls per second), the SVG polyline over them, and the
    shaded spans (closed send windows, the current pause) in SVG x and width."""
    points = [((row["bucket"] - started).total_seconds(),
               (int(row["sent"]) + int(row["failed"])) / width) for row in rows]
    top = max([y for _, y in points] + [float(rate or 0), 1.0]) * 1.1
    span = (until - started).total_seconds() if until else 0.0
    right = max([x + width for x, _ in points] + [float(width), span])

    def xy(x: float, y: float) -> str:
        return (f"{PAD + x / right * (WIDTH - 2 * PAD):.1f},"
                f"{HEIGHT - PAD - y / top * (HEIGHT - 2 * PAD):.1f}")

    spans = []
    for begin, end, kind in shades:
        left = max(0.0, (begin - started).total_seconds())
        stop = min(right, (end - started).total_seconds())
        if stop > left:
            x0 = PAD + left / right * (WIDTH - 2 * PAD)
            x1 = PAD + stop / right * (WIDTH - 2 * PAD)
            spans.append({"x": round(x0, 1), "w": round(x1 - x0, 1), "kind": kind})
    rate_y = HEIGHT - PAD - float(rate or 0) / top * (HEIGHT - 2 * PAD)
    return {
        "bucket_seconds": width,
        "points": [[round(x, 3), round(y, 3)] for x, y in points],
        "polyline": " ".join(xy(x, y) for x, y in points),
        "rate_y": round(rate_y, 1) if rate else None,
        "shades": spans,
        "top": round(top, 2), "right": round(right, 1),
        "width": WIDTH, "height": HEIGHT, "pad": PAD,
    }
