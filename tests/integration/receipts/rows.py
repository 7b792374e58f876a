"""Rows for receipt tests: a running run with pending recipients, sent outcomes."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.store import Pool
from daemon.store.recipients import OutcomeRow, write_outcomes

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN = "run_01RECEIPTS"


async def make_run(pool: Pool, run_id: str = RUN, size: int = 10, channel: str = "sms") -> str:
    """A running run of `size` pending recipients (positions 0..size-1)."""
    campaign = f"c-{run_id}"
    await pool.execute(
        """INSERT INTO campaigns (id, name, channel, content, status)
           VALUES ($1, $1, $2, '{}'::jsonb, 'live')""", campaign, channel)
    await pool.execute(
        """INSERT INTO runs (id, campaign_id, status, scheduled_for, targeted, pending)
           VALUES ($1, $2, 'running', $3, $4, $4)""", run_id, campaign, START, size)
    await pool.execute(
        """INSERT INTO run_recipients (run_id, position, profile_id, phone)
           SELECT $1, p, 'p' || p, '+3360000' || p FROM generate_series(0, $2 - 1) AS p""",
        run_id, size)
    return run_id


async def mark_sent(pool: Pool, run_id: str, positions: range | list[int], provider: str,
                    message_id: str = "SM{position}") -> None:
    """Write `sent` outcomes, as the engine does, with provider message ids."""
    await write_outcomes(pool, [
        OutcomeRow(run_id, p, "sent", None, None, 1, message_id.format(position=p), None,
                   START, provider)
        for p in positions
    ])
