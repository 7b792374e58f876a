"""Many small campaigns and runs: one-recipient runs of 300 campaigns starting over a few
seconds (each on time, few tasks alive), and a burst of one-recipient runs on one campaign."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from datetime import timedelta

import pytest

from daemon.store import Pool
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    engine_config,
    future,
    wait_run_status,
)
from tests.integration.engine.test_engine_rate import daemon_gc  # noqa: F401 (a fixture)


async def _campaigns(pool: Pool, count: int, *, end_at: bool = False) -> None:
    await pool.execute(
        """
        INSERT INTO campaigns (id, name, channel, content, status, activated_at, end_at)
        SELECT 'c' || n, 'c' || n, 'sms', '{"body": "hi"}', 'live', now(),
               CASE WHEN $2 THEN now() + interval '1 hour' END
        FROM generate_series(0, $1 - 1) AS n
        """,
        count, end_at,
    )


async def _one_recipient_runs(pool: Pool, campaign_ids: list[str],
                              starts: list[object]) -> list[str]:
    run_ids = [f"run_{uuid.uuid4().hex[:12]}" for _ in campaign_ids]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO runs (id, campaign_id, inline_count, scheduled_for)
            SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[])
            """,
            run_ids, campaign_ids, [1] * len(run_ids), starts,
        )
        await conn.execute(
            """
            INSERT INTO run_inline_recipients (run_id, position, profile_id, data)
            SELECT r, 0, 'p-' || r, jsonb_build_object('phone', '+33600000000')
            FROM unnest($1::text[]) AS r
            """,
            run_ids,
        )
        await conn.execute("SELECT pg_notify('campaignd_runs', '')")
    return run_ids


@pytest.mark.usefixtures("daemon_gc")
async def test_hundreds_of_campaigns_start_on_time_without_a_crowd_of_tasks(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    count = 300
    await _campaigns(pool, count)
    await start_engine(engine_config(gateway))
    first = future(4.0)
    starts = [first + timedelta(seconds=3.0 * n / count) for n in range(count)]
    run_ids = await _one_recipient_runs(pool, [f"c{n}" for n in range(count)], starts)
    most_tasks = 0
    async with asyncio.timeout(60):
        while len(gateway.arrivals) < count:
            most_tasks = max(most_tasks, len(asyncio.all_tasks()))
            await asyncio.sleep(0.05)
    scheduled = dict(zip(run_ids, starts, strict=True))
    late = sorted((a.wall - scheduled[a.key.split(":")[0]]).total_seconds()
                  for a in gateway.arrivals)
    p50, p99 = statistics.median(late), late[int(len(late) * 0.99)]
    print(f"\n{count} campaigns: lateness p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {late[-1] * 1000:.1f} ms, earliest {late[0] * 1000:.1f} ms; "
          f"at most {most_tasks} tasks")
    assert late[0] >= 0  # never before its start
    assert p99 < 0.5  # the benchmark's goal is 20 ms; a shared test box gets slack
    assert most_tasks < 15 * count  # a handful per live campaign, not one per sender
    for run_id in run_ids[-3:]:
        assert (await wait_run_status(pool, run_id))["sent"] == 1


@pytest.mark.usefixtures("daemon_gc")
async def test_a_burst_of_one_recipient_runs_on_one_campaign(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    count = 400
    await _campaigns(pool, 1, end_at=True)
    await start_engine(engine_config(gateway))
    began = asyncio.get_running_loop().time()
    now = future(0)
    run_ids = await _one_recipient_runs(pool, ["c0"] * count, [now] * count)
    async with asyncio.timeout(90):
        while await pool.fetchval(
                "SELECT count(*) FROM runs WHERE status = 'completed'") < count:
            await asyncio.sleep(0.1)
    seconds = asyncio.get_running_loop().time() - began
    print(f"\n{count} one-recipient runs of one campaign done in {seconds:.1f} s "
          f"({count / seconds:.0f} runs/s)")
    assert sorted(a.key for a in gateway.arrivals) == sorted(f"{r}:0" for r in run_ids)
