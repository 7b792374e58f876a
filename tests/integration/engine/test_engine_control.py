"""Live control in the engine (SPEC §9.1) against a gateway stand-in: a pause stops the calls
and excludes nobody, a resume goes on in position order and re-plans, a rate change holds at
the gateway and re-plans (recipients put back or excluded), the counts add up at every read.

The changes are made as the API makes them (`store.control`, one transaction, NOTIFY)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from daemon.store import Pool
from daemon.store import control as control_store
from daemon.store import runs as runs_store
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    add_profiles,
    assert_counts_add_up,
    engine_config,
    make_campaign,
    recipient_rows,
    run_row,
    trigger,
    wait_run_status,
)
from tests.unit.engine.rates import max_in_window


async def _change(pool: Pool, action: Callable[..., Awaitable[Any]], campaign_id: str,
                  **kwargs: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE", campaign_id)
        await action(conn, campaign_id, now=datetime.now(UTC), **kwargs)


async def _pause(pool: Pool, campaign_id: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await control_store.pause(conn, campaign_id, datetime.now(UTC))


async def _resume(pool: Pool, campaign_id: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await control_store.resume(conn, campaign_id, datetime.now(UTC))


async def _watch_counts(pool: Pool, run_id: str, stop: asyncio.Event,
                        reads: list[dict[str, Any]]) -> None:
    while not stop.is_set():
        row = await run_row(pool, run_id)
        assert_counts_add_up(row)
        reads.append(row)
        await asyncio.sleep(0.02)


async def test_a_pause_stops_the_calls_and_a_resume_goes_on_in_order(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=50)
    await add_profiles(pool, 400, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(20)
    await _pause(pool, "c1")
    paused_at = datetime.now(UTC)
    await asyncio.sleep(1.5)
    at_pause = len(gateway.arrivals)
    late = [a for a in gateway.arrivals if (a.wall - paused_at).total_seconds() > 1.0]
    assert late == []  # SPEC: no call starts from 1 s after the pause
    await asyncio.sleep(1.0)
    assert len(gateway.arrivals) == at_pause  # still paused
    row = await run_row(pool, run_id)
    assert row["status"] == "running"  # reported as paused (the API's view)
    assert sum(row[k] for k in row if k.startswith("excluded_")) == 0
    assert_counts_add_up(row)
    await _resume(pool, "c1")
    await gateway.wait_for(at_pause + 20, timeout=10)
    final = await wait_run_status(pool, run_id, timeout=30)
    assert (final["sent"], final["end_reason"]) == (400, "delivered")
    # In position order across the pause, each recipient once.
    order = [int(a.body["profile_id"].removeprefix("p")) for a in gateway.arrivals]
    assert order == list(range(400))


async def test_a_rate_change_holds_at_the_gateway_and_replans(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=40)
    await add_profiles(pool, 1000, audience="a1")
    await start_engine(engine_config(gateway, limits={"time_cap": 12}))
    run_id = await trigger(pool, "c1", audience="a1")
    started = await wait_run_status(pool, run_id, "running")
    assert started["excluded_time_cap"] == 1000 - 40 * 12  # the plan at 40/s: 480 reachable
    stop = asyncio.Event()
    reads: list[dict[str, Any]] = []
    watcher = asyncio.create_task(_watch_counts(pool, run_id, stop, reads))
    await gateway.wait_for(40)
    changed_at = datetime.now(UTC)
    await _change(pool, control_store.set_live_fields, "c1", rate=10, name=None)
    async with asyncio.timeout(5):
        while (await run_row(pool, run_id))["rate_per_second"] != 10:
            await asyncio.sleep(0.02)
    replanned = await run_row(pool, run_id)
    await asyncio.sleep(3.0)
    stop.set()
    await watcher
    # The decrease: every window ending at a call made 1 s after the change holds ≤ 10.
    after = [a.at for a in gateway.arrivals if (a.wall - changed_at).total_seconds() >= 1.0]
    assert len(after) >= 15
    assert max_in_window(after, 1.0) <= 10 + 1  # +1: the arrival jitter of one call
    # The re-plan: at most 10/s × the seconds left, beyond the recipients in flight.
    left = (replanned["deadline"] - replanned["replanned_at"]).total_seconds()
    reachable = replanned["pending"]
    claimed = await pool.fetchval("SELECT count(*) FROM run_claims WHERE run_id = $1", run_id)
    assert reachable <= max(int(10 * left), 0) + claimed + 1
    assert replanned["excluded_time_cap"] > started["excluded_time_cap"]
    assert_counts_add_up(replanned)
    assert len(reads) > 10
    final = await wait_run_status(pool, run_id, timeout=30)
    assert final["end_reason"] == "time_cap"
    assert_counts_add_up(final)
    rows = await recipient_rows(pool, run_id)
    sent = [r["position"] for r in rows if r["status"] == "sent"]
    assert sent == list(range(len(sent)))  # a prefix, in position order


async def test_an_increase_puts_back_the_recipients_that_fit_again(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=10)
    await add_profiles(pool, 500, audience="a1")
    handle = await start_engine(engine_config(gateway, limits={"time_cap": 20}))
    run_id = await trigger(pool, "c1", audience="a1")
    started = await wait_run_status(pool, run_id, "running")
    assert started["excluded_time_cap"] == 300  # 10/s × 20 s = 200 reachable
    await gateway.wait_for(5)
    await _change(pool, control_store.set_live_fields, "c1", rate=100, name=None)
    async with asyncio.timeout(5):
        while (row := await run_row(pool, run_id))["rate_per_second"] != 100:
            await asyncio.sleep(0.02)
    # ~19 s left at 100/s: everyone fits again.
    assert row["excluded_time_cap"] == 0
    registry = handle.ctx.metrics.registry
    assert registry.get_sample_value("campaignd_replans_total") == 1.0
    assert_counts_add_up(row)
    final = await wait_run_status(pool, run_id, timeout=30)
    assert (final["sent"], final["end_reason"]) == (500, "delivered")


async def test_a_resume_replans_for_the_time_the_pause_spent(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 200, audience="a1")
    await start_engine(engine_config(gateway, limits={"time_cap": 10}))
    run_id = await trigger(pool, "c1", audience="a1")
    started = await wait_run_status(pool, run_id, "running")
    assert started["excluded_time_cap"] == 0  # 20/s × 10 s = 200: everyone fits
    await gateway.wait_for(10)
    await _pause(pool, "c1")
    await asyncio.sleep(4.0)  # spends 4 of the 10 s
    await _resume(pool, "c1")
    async with asyncio.timeout(5):
        while (row := await run_row(pool, run_id))["replanned_at"] is None:
            await asyncio.sleep(0.02)
    left = (row["deadline"] - row["replanned_at"]).total_seconds()
    claimed = await pool.fetchval("SELECT count(*) FROM run_claims WHERE run_id = $1", run_id)
    assert row["excluded_time_cap"] > 0
    assert row["pending"] <= int(20 * left) + claimed + 1
    assert_counts_add_up(row)
    final = await wait_run_status(pool, run_id, timeout=30)
    assert final["deadline"] == started["deadline"]  # the deadline never moves
    assert final["end_reason"] == "time_cap"
    assert_counts_add_up(final)


async def test_a_paused_campaigns_due_runs_wait_for_the_resume(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=50)
    await add_profiles(pool, 5, audience="a1")
    await _pause(pool, "c1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    await asyncio.sleep(2.0)
    assert (await run_row(pool, run_id))["status"] == "scheduled"
    assert gateway.arrivals == []
    await _resume(pool, "c1")
    final = await wait_run_status(pool, run_id, timeout=15)
    assert (final["sent"], final["end_reason"]) == (5, "delivered")


async def test_a_replan_during_a_chunked_freeze_gives_the_later_chunks_the_new_capacity(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=100)
    await add_profiles(pool, 100_000, audience="a1")
    await start_engine(engine_config(gateway, limits={"time_cap": 600}))
    run_id = await trigger(pool, "c1", audience="a1")
    await wait_run_status(pool, run_id, "running")
    freezing = await pool.fetchval("SELECT count(*) FROM run_freezes WHERE run_id = $1", run_id)
    await _change(pool, control_store.set_live_fields, "c1", rate=50, name=None)
    stop = asyncio.Event()
    reads: list[dict[str, Any]] = []
    watcher = asyncio.create_task(_watch_counts(pool, run_id, stop, reads))
    async with asyncio.timeout(20):
        while (row := await run_row(pool, run_id))["replanned_at"] is None or \
                await pool.fetchval("SELECT count(*) FROM run_freezes WHERE run_id = $1", run_id):
            await asyncio.sleep(0.05)
    stop.set()
    await watcher
    left = (row["deadline"] - row["replanned_at"]).total_seconds()
    claimed = await pool.fetchval("SELECT count(*) FROM run_claims WHERE run_id = $1", run_id)
    # Every member frozen, the later chunks against the new capacity (50/s × what was left).
    assert row["targeted"] == 100_000
    assert row["sent"] + row["failed"] + row["pending"] <= int(50 * left) + claimed + 200
    assert row["sent"] + row["failed"] + row["pending"] >= int(50 * left) - 200
    assert_counts_add_up(row)
    assert reads
    stored = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'pending') AS pending, "
        "count(*) FILTER (WHERE reason = 'time_cap') AS time_cap FROM run_recipients "
        "WHERE run_id = $1", run_id)
    fresh = await run_row(pool, run_id)
    assert stored is not None
    assert fresh["excluded_time_cap"] == stored["time_cap"]  # the counts are the rows'
    print(f"\nfreezing at the re-plan: {bool(freezing)}; pending {fresh['pending']}")


async def test_the_deadline_and_a_cancel_still_end_paused_runs(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 300, audience="a1")
    await start_engine(engine_config(gateway, limits={"time_cap": 4}))
    first = await trigger(pool, "c1", audience="a1")
    second = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(10)
    await _pause(pool, "c1")
    await asyncio.sleep(0.5)
    assert await runs_store.cancel(pool, second, datetime.now(UTC))  # as the API does
    # A pause spends the 12-hour clock: the deadline (4 s) ends the paused run.
    ended = await wait_run_status(pool, first, timeout=15)
    assert (ended["status"], ended["end_reason"]) == ("completed", "time_cap")
    assert ended["pending"] == 0 and ended["excluded_time_cap"] > 0
    assert_counts_add_up(ended)
    cancelled = await wait_run_status(pool, second, timeout=15)
    assert (cancelled["status"], cancelled["end_reason"]) == ("cancelled", "cancelled")
    assert cancelled["excluded_cancelled"] > 0
    assert_counts_add_up(cancelled)
