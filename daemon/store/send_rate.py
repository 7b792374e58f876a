"""The send-rate curve of one run: outcomes per second, bucketed in SQL.

The bucket width is chosen so a run of any length gives at most `MAX_POINTS`
buckets (a 12-hour run at 2 000 points is 22 s a bucket). The scan is bounded to
the run by the primary key / outcome index on `run_recipients (run_id, ...)`.
"""

from __future__ import annotations

import math
from datetime import datetime

from daemon.store import Executor, Record

MAX_POINTS = 2_000

CURVE_SQL = """
SELECT date_bin(make_interval(secs => $2), updated_at, $3::timestamptz) AS bucket,
       count(*) FILTER (WHERE status = 'sent') AS sent,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM run_recipients
WHERE run_id = $1 AND status IN ('sent', 'failed') AND updated_at IS NOT NULL
GROUP BY 1
ORDER BY 1
"""


def bucket_seconds(started: datetime, until: datetime, max_points: int = MAX_POINTS) -> int:
    """A whole number of seconds per bucket so that [started, until] fits in max_points."""
    span = max((until - started).total_seconds(), 1.0)
    return max(1, math.ceil(span / max_points))


async def curve(db: Executor, run_id: str, started: datetime, width: int) -> list[Record]:
    """(bucket, sent, failed) rows in time order, buckets `width` seconds from `started`."""
    rows: list[Record] = await db.fetch(CURVE_SQL, run_id, float(width), started)
    return rows


async def pauses(db: Executor, campaign_id: str, since: datetime
                 ) -> list[tuple[datetime, datetime | None]]:
    """The campaign's pauses that ended after `since` (or have not ended: None), in order;
    recorded by the trigger of migration 0020."""
    rows = await db.fetch(
        "SELECT paused_at, resumed_at FROM campaign_pauses WHERE campaign_id = $1 "
        "AND (resumed_at IS NULL OR resumed_at > $2) ORDER BY paused_at", campaign_id, since)
    return [(row["paused_at"], row["resumed_at"]) for row in rows]
