"""The counts invariant in the database: random interleavings of outcome batches (late,
repeated, retried) and a final close, checked against the recipient rows after each write
and against the counting rule stated in Python (`report.count_deltas`)."""

from __future__ import annotations

import random

import pytest

from daemon.engine.recording import count_deltas, write_batch
from daemon.models import ExclusionReason
from daemon.store import Pool
from daemon.store import engine as engine_store
from daemon.store.recipients import OutcomeRow
from tests.integration.engine.conftest import make_campaign

STATUSES = [("sent", None), ("failed", "rejected"), ("pending", None),
            ("excluded", "time_cap"), ("excluded", "opted_out")]


async def _check(pool: Pool, run_id: str) -> None:
    row = await pool.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    assert row is not None
    actual = {(r["status"], r["reason"] if r["status"] == "excluded" else None): r["n"]
              for r in await pool.fetch(
                  "SELECT status, reason, count(*) AS n FROM run_recipients WHERE run_id = $1 "
                  "GROUP BY 1, 2", run_id)}
    assert row["sent"] == actual.get(("sent", None), 0)
    assert row["failed"] == actual.get(("failed", None), 0)
    assert row["pending"] == actual.get(("pending", None), 0)
    for reason in ExclusionReason:
        assert row[f"excluded_{reason.value}"] == actual.get(("excluded", reason.value), 0)


@pytest.mark.parametrize("seed", range(12))
async def test_random_outcome_batches_keep_the_counts_equal_to_the_rows(
    pool: Pool, seed: int
) -> None:
    rng = random.Random(seed)
    await make_campaign(pool, "c1")
    size = rng.randint(1, 60)
    run_id = f"run_{seed}"
    await pool.execute(
        "INSERT INTO runs (id, campaign_id, status, scheduled_for, started_at, targeted, "
        "pending) VALUES ($1, 'c1', 'running', now(), now(), $2, $2)", run_id, size)
    await pool.execute(
        "INSERT INTO run_recipients (run_id, position, profile_id) "
        "SELECT $1, n, 'p' || n FROM generate_series(0, $2 - 1) AS n", run_id, size)
    now = await pool.fetchval("SELECT now()")
    model = ["pending"] * size  # the rows as the counting rule (report.count_deltas) sees them
    counts = {"sent": 0, "failed": 0, "pending": size}
    for _ in range(rng.randint(1, 8)):
        batch = []
        # One outcome per recipient in a batch, as the engine writes them.
        for position in rng.sample(range(size), rng.randint(1, min(size, 20))):
            status, reason = rng.choice(STATUSES)
            batch.append(OutcomeRow(run_id, position, status, reason, None,
                                    1, None, now if status == "pending" else None, now))
        expected = []
        for o in batch:
            if model[o.position] == "pending":
                model[o.position] = o.status
                expected.append((run_id, o.status, o.reason))
        flushed = await write_batch(pool, batch)
        assert sorted(flushed.applied, key=str) == sorted(expected, key=str)
        for delta in count_deltas(expected).values():
            counts["sent"] += delta.sent
            counts["failed"] += delta.failed
            counts["pending"] -= delta.done
        if expected:
            row = flushed.counts[run_id]
            assert (row["sent"], row["failed"], row["pending"]) == (
                counts["sent"], counts["failed"], counts["pending"])
        await _check(pool, run_id)
    closed = await engine_store.close_run(pool, run_id, "c1", now=now,
                                          exclude_as=ExclusionReason.CANCELLED)
    assert closed is not None and closed.counts["pending"] == 0
    await _check(pool, run_id)
    assert await pool.fetchval("SELECT status FROM runs WHERE id = $1", run_id) == "cancelled"
