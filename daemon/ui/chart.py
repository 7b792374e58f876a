"""The send-rate curve as SVG coordinates (drawn server-side; the JS redraws from JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from daemon.store import Record

WIDTH, HEIGHT, PAD = 800, 240, 40


def curve_view(rows: list[Record], started: datetime, width: int,
               rate: float | None) -> dict[str, Any]:
    """Points (seconds since start, calls per second) and the SVG polyline over them."""
    points = [((row["bucket"] - started).total_seconds(),
               (int(row["sent"]) + int(row["failed"])) / width) for row in rows]
    top = max([y for _, y in points] + [float(rate or 0), 1.0]) * 1.1
    right = max([x for x, _ in points] + [float(width)]) + width

    def xy(x: float, y: float) -> str:
        return (f"{PAD + x / right * (WIDTH - 2 * PAD):.1f},"
                f"{HEIGHT - PAD - y / top * (HEIGHT - 2 * PAD):.1f}")

    rate_y = HEIGHT - PAD - float(rate or 0) / top * (HEIGHT - 2 * PAD)
    return {
        "bucket_seconds": width,
        "points": [[round(x, 3), round(y, 3)] for x, y in points],
        "polyline": " ".join(xy(x, y) for x, y in points),
        "rate_y": round(rate_y, 1) if rate else None,
        "top": round(top, 2), "right": round(right, 1),
        "width": WIDTH, "height": HEIGHT, "pad": PAD,
    }
