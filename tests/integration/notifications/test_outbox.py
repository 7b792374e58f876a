"""The outbox's triggers against real PostgreSQL: an event is written in the transaction of
the state change it reports, only while notifications are on, for the chosen events."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from daemon.models import NotificationEvent
from daemon.store import Pool, control
from daemon.store import notifications as store
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    engine_config,
    make_campaign,
    trigger,
    wait_run_status,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
ALL = tuple(NotificationEvent)


async def _events(pool: Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM notifications ORDER BY id")
    return [{**dict(row), "json": json.loads(row["body"])} for row in rows]


async def _start(conn: Any, run_id: str) -> None:
    await conn.execute(
        "UPDATE runs SET status = 'running', started_at = $2, targeted = 3, pending = 2, "
        "excluded_time_cap = 1 WHERE id = $1", run_id, NOW)


async def test_without_settings_a_state_change_writes_nothing(pool: Pool) -> None:
    await make_campaign(pool)
    run_id = await trigger(pool, "c1")
    await _start(pool, run_id)
    await store.put_settings(pool, None, NOW)  # a daemon without [notifications]
    await pool.execute("UPDATE runs SET status = 'completed', finished_at = $2, pending = 0, "
                       "sent = 2 WHERE id = $1", run_id, NOW)
    assert await _events(pool) == []


async def test_the_event_commits_or_rolls_back_with_its_state_change(pool: Pool) -> None:
    await store.put_settings(pool, ALL, NOW)
    await make_campaign(pool)
    run_id = await trigger(pool, "c1")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await _start(conn, run_id)
        assert await _events(pool) == []  # not visible before the commit
        await transaction.rollback()
    assert await _events(pool) == []
    async with pool.acquire() as conn, conn.transaction():
        await _start(conn, run_id)
    [event] = await _events(pool)
    assert event["type"] == "run.started" and event["run_id"] == run_id
    assert event["status"] == "pending" and event["webhook_id"].startswith("msg_")
    assert event["created_at"] == NOW == event["next_attempt_at"]
    body = event["json"]
    assert list(body) == ["type", "timestamp", "data"]
    assert body["type"] == "run.started"
    assert body["timestamp"] == "2026-12-07T09:00:00.000000Z"
    data = body["data"]
    assert data["run_id"] == run_id and data["campaign_id"] == "c1"
    assert data["status"] == "running" and data["started_at"] == body["timestamp"]
    assert data["counts"] == {"targeted": 3, "sent": 0, "failed": 0, "pending": 2,
                              "excluded": {"time_cap": 1, "campaign_end": 0, "opted_out": 0,
                                           "no_address": 0, "duplicate": 0, "cancelled": 0}}


async def test_only_the_configured_events_are_written(pool: Pool) -> None:
    await store.put_settings(pool, (NotificationEvent.RUN_FINISHED,), NOW)
    await make_campaign(pool)
    run_id = await trigger(pool, "c1")
    await _start(pool, run_id)
    await pool.execute("UPDATE runs SET rate_per_second = 5 WHERE id = $1", run_id)  # no event
    await pool.execute("UPDATE runs SET status = 'completed', finished_at = $2, pending = 0, "
                       "sent = 2, end_reason = 'time_cap' WHERE id = $1", run_id, NOW)
    [event] = await _events(pool)
    assert event["type"] == "run.finished"
    data = event["json"]["data"]
    assert data["status"] == "completed" and data["end_reason"] == "time_cap"
    assert data["counts"]["sent"] == 2 and data["counts"]["pending"] == 0


async def test_pause_resume_and_replan_write_one_event_per_running_run(pool: Pool) -> None:
    await store.put_settings(pool, ALL, NOW)
    await make_campaign(pool)
    running = [await trigger(pool, "c1") for _ in range(2)]
    waiting = await trigger(pool, "c1")
    for run_id in running:
        await _start(pool, run_id)
    async with pool.acquire() as conn, conn.transaction():
        await control.pause(conn, "c1", NOW)
    async with pool.acquire() as conn, conn.transaction():
        await control.resume(conn, "c1", NOW)
    async with pool.acquire() as conn, conn.transaction():
        await control.replan(conn, running[0], capacity=10, reason=_time_cap(), rate=7, now=NOW,
                             apply=True)
        await control.replan(conn, running[1], capacity=10, reason=_time_cap(), rate=7, now=NOW,
                             apply=False)  # a dry run: nothing changes, no event
    events = await _events(pool)
    kinds = [(e["type"], e["run_id"]) for e in events if e["type"] != "run.started"]
    assert sorted(kinds[:2]) == sorted(("run.paused", r) for r in running)
    assert sorted(kinds[2:4]) == sorted(("run.resumed", r) for r in running)
    assert kinds[4:] == [("run.replanned", running[0])]
    assert waiting not in {e["run_id"] for e in events}
    paused = [e for e in events if e["type"] == "run.paused"]
    assert {e["json"]["data"]["status"] for e in paused} == {"paused"}
    assert events[-1]["json"]["data"]["rate_per_second"] == 7


def _time_cap() -> Any:
    from daemon.models import ExclusionReason

    return ExclusionReason.TIME_CAP


async def test_a_run_through_the_engine_notifies_started_finished_then_campaign_completed(
        pool: Pool, database_url: str, gateway: Gateway, start_engine: EngineFactory) -> None:
    await store.put_settings(pool, ALL, NOW)
    heard: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(store.CHANNEL, lambda *args: heard.append(args[2]))
    try:
        await make_campaign(pool)
        await start_engine(engine_config(gateway))
        run_id = await trigger(pool, "c1", recipients=[
            {"profile_id": f"p{i}", "phone": f"+3361234567{i}"} for i in range(3)])
        await wait_run_status(pool, run_id)
        async with asyncio.timeout(10):
            while len(await _events(pool)) < 3:
                await asyncio.sleep(0.02)
    finally:
        await listener.close()
    events = await _events(pool)
    assert [(e["type"], e["run_id"]) for e in events] == [
        ("run.started", run_id), ("run.finished", run_id), ("campaign.completed", None)]
    assert events[1]["json"]["data"]["counts"]["sent"] == 3
    assert events[2]["json"]["data"] == {**events[2]["json"]["data"], "campaign_id": "c1",
                                         "status": "completed", "runs": 1}
    assert heard and set(heard) == {store.CHANNEL}  # the deliverers were told

