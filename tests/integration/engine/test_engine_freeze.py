"""A stored audience frozen in chunks: the run sends after the first, the rest follows, and
the outcome is exactly that of one statement: same recipients, positions, exclusions and
counts, at every chunk boundary, after a crash mid-freeze, and when the run is cancelled
(or reaches its deadline) before the freeze is done."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.models import ExclusionReason
from daemon.store import Pool, freeze
from daemon.store import engine as engine_store
from daemon.store import runs as run_store
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

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OPTED_OUT = {1, 7, 13}
NO_PHONE = {4, 12}


async def _audience(pool: Pool, size: int) -> None:
    await add_profiles(pool, size, audience="a1")
    await pool.execute("UPDATE profiles SET sub_sms = false WHERE id = ANY($1::text[])",
                       [f"p{n}" for n in OPTED_OUT])
    await pool.execute("UPDATE profiles SET phone = NULL WHERE id = ANY($1::text[])",
                       [f"p{n}" for n in NO_PHONE])


async def _start(pool: Pool, campaign_id: str, run_id: str, *, size: int, first_chunk: int,
                 now: datetime = NOW) -> engine_store.StartedRun:
    campaign = await engine_store.load_campaign(pool, campaign_id)
    run = await engine_store.load_run(pool, run_id)
    assert campaign is not None and run is not None
    started = await engine_store.start_run(pool, run, campaign, now=now, time_cap=10,
                                           size=size, first_chunk=first_chunk)
    assert started is not None
    return started


def _expected(size: int, capacity: int | None) -> list[tuple[str, str | None]]:
    """(profile, reason) in order, as the one-statement freeze decides them."""
    expected: list[tuple[str, str | None]] = []
    eligible = 0
    for n in range(size):
        reason = "opted_out" if n in OPTED_OUT else "no_address" if n in NO_PHONE else None
        if reason is None:
            eligible += 1
            if capacity is not None and eligible > capacity:
                reason = "time_cap"
        expected.append((f"p{n}", reason))
    return expected


async def _rows_match_counts(pool: Pool, run_id: str) -> dict[str, Any]:
    row = await run_row(pool, run_id)
    assert_counts_add_up(row)
    rows = await recipient_rows(pool, run_id)
    assert [r["position"] for r in rows] == list(range(len(rows)))
    by_status = Counter(r["status"] for r in rows)
    assert (row["targeted"], row["sent"], row["failed"], row["pending"]) == (
        len(rows), by_status["sent"], by_status["failed"], by_status["pending"])
    for reason in ExclusionReason:
        assert row[f"excluded_{reason.value}"] == sum(
            1 for r in rows if r["status"] == "excluded" and r["reason"] == reason.value)
    return row


async def test_every_chunk_boundary_freezes_what_one_statement_would(pool: Pool) -> None:
    await make_campaign(pool, "c1", rate=1)  # capacity 10 (a 10 s time cap)
    await _audience(pool, 23)
    run_id = await trigger(pool, "c1", audience="a1", scheduled_for=NOW)
    started = await _start(pool, "c1", run_id, size=23, first_chunk=4)
    assert started.freezing and started.plan.capacity == 10
    assert (started.counts.targeted, started.counts.pending) == (23, 22)  # p1 opted out
    row = await run_row(pool, run_id)
    assert_counts_add_up(row)
    chunks = 0
    while (chunk := await freeze.advance(pool, run_id, now=NOW, limit=5)) is not None:
        chunks += 1
        assert chunk.counts["targeted"] == 23
        assert_counts_add_up(await run_row(pool, run_id))
    assert chunks == 4  # 4 + 5 + 5 + 5 + 4
    assert await pool.fetchval("SELECT count(*) FROM run_freezes") == 0
    rows = await recipient_rows(pool, run_id)
    assert [(r["profile_id"], r["reason"]) for r in rows] == _expected(23, 10)
    row = await _rows_match_counts(pool, run_id)
    assert (row["pending"], row["excluded_time_cap"], row["excluded_opted_out"],
            row["excluded_no_address"]) == (10, 8, 3, 2)


async def test_members_changed_during_the_freeze_are_in_the_run_at_most_once(
    pool: Pool
) -> None:
    await make_campaign(pool, "c1", rate=100)
    await add_profiles(pool, 10, audience="a1")
    await add_profiles(pool, 2, prefix="q")
    run_id = await trigger(pool, "c1", audience="a1", scheduled_for=NOW)
    await _start(pool, "c1", run_id, size=10, first_chunk=3)
    # p1 (frozen) leaves and comes back, at a new position past the start's last one;
    # p8 (not frozen yet) leaves; q0 joins: after the start, so not in this run.
    await pool.execute("DELETE FROM audience_members WHERE profile_id IN ('p1', 'p8')")
    await pool.execute("INSERT INTO audience_members (audience_id, profile_id) "
                       "VALUES ('a1', 'p1'), ('a1', 'q0')")
    while await freeze.advance(pool, run_id, now=NOW, limit=2) is not None:
        pass
    rows = await recipient_rows(pool, run_id)
    assert [r["profile_id"] for r in rows] == [f"p{n}" for n in range(10) if n != 8]
    row = await _rows_match_counts(pool, run_id)
    assert (row["targeted"], row["pending"]) == (9, 9)


async def test_a_close_freezes_the_rest_with_its_reason(pool: Pool) -> None:
    await make_campaign(pool, "c1", rate=5)
    await _audience(pool, 20)
    run_id = await trigger(pool, "c1", audience="a1", scheduled_for=NOW)
    await _start(pool, "c1", run_id, size=20, first_chunk=5)
    assert await run_store.cancel(pool, run_id, NOW)
    closed = await engine_store.close_run(pool, run_id, "c1", now=NOW,
                                          exclude_as=ExclusionReason.CANCELLED)
    assert closed is not None and closed.end_reason == "cancelled"
    rows = await recipient_rows(pool, run_id)
    assert [(r["profile_id"], r["reason"]) for r in rows] == [
        (profile, reason or "cancelled") for profile, reason in _expected(20, None)]
    row = await _rows_match_counts(pool, run_id)
    assert (row["status"], row["excluded_cancelled"]) == ("cancelled", 15)
    assert await pool.fetchval("SELECT count(*) FROM run_freezes") == 0


async def _left_mid_freeze(pool: Pool) -> str:
    """A run of 30 (25 eligible) left by a daemon that died mid-freeze: started with 4
    members, then one chunk of 5 more."""
    await make_campaign(pool, "c1", rate=200)
    await _audience(pool, 30)
    run_id = await trigger(pool, "c1", audience="a1")
    await _start(pool, "c1", run_id, size=30, first_chunk=4, now=datetime.now(UTC))
    assert await freeze.advance(pool, run_id, now=datetime.now(UTC), limit=5) is not None
    return run_id


async def test_a_restart_mid_freeze_sends_every_member_once(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    run_id = await _left_mid_freeze(pool)
    await start_engine(engine_config(gateway))
    row = await wait_run_status(pool, run_id)
    assert (row["status"], row["end_reason"], row["sent"]) == ("completed", "delivered", 25)
    keys = Counter(gateway.keys())
    assert len(keys) == 25 and set(keys.values()) == {1}
    await _rows_match_counts(pool, run_id)


async def test_a_run_cancelled_mid_freeze_gives_every_member_an_outcome(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    run_id = await _left_mid_freeze(pool)
    assert await run_store.cancel(pool, run_id, datetime.now(UTC))
    await start_engine(engine_config(gateway))
    row = await wait_run_status(pool, run_id)
    assert (row["status"], row["end_reason"]) == ("cancelled", "cancelled")
    row = await _rows_match_counts(pool, run_id)
    assert row["targeted"] == 30 and row["pending"] == 0
    assert row["sent"] + row["excluded_cancelled"] == 25
    assert len(gateway.arrivals) == row["sent"]


async def test_the_engine_sends_while_it_freezes(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    size = freeze.FIRST_CHUNK + 3_000
    await make_campaign(pool, "c1", rate=2000)
    await add_profiles(pool, size, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id, timeout=60)
    assert (row["status"], row["end_reason"], row["sent"]) == ("completed", "delivered", size)
    assert row["excluded_time_cap"] == 0
    keys = Counter(gateway.keys())
    assert len(keys) == size and set(keys.values()) == {1}
    assert await pool.fetchval("SELECT count(*) FROM run_freezes") == 0


async def test_a_deadline_mid_freeze_excludes_the_rest_for_it(pool: Pool) -> None:
    await make_campaign(pool, "c1", rate=1, end_at=NOW + timedelta(seconds=5))
    await _audience(pool, 12)
    run_id = await trigger(pool, "c1", audience="a1", scheduled_for=NOW)
    started = await _start(pool, "c1", run_id, size=12, first_chunk=3)
    assert started.plan.deadline_reason is ExclusionReason.CAMPAIGN_END
    closed = await engine_store.close_run(pool, run_id, "c1", now=NOW + timedelta(seconds=5),
                                          exclude_as=ExclusionReason.CAMPAIGN_END)
    assert closed is not None and closed.end_reason == "campaign_end"
    row = await _rows_match_counts(pool, run_id)
    assert (row["targeted"], row["excluded_campaign_end"], row["excluded_opted_out"],
            row["excluded_no_address"]) == (12, 9, 2, 1)


async def test_an_unthrottled_run_freezes_its_audience_at_once(pool: Pool) -> None:
    await make_campaign(pool, "c1")  # it would outrun the chunks
    await _audience(pool, 12)
    run_id = await trigger(pool, "c1", audience="a1", scheduled_for=NOW)
    started = await _start(pool, "c1", run_id, size=12, first_chunk=3)
    assert not started.freezing
    assert (started.counts.targeted, started.counts.pending) == (12, 9)
    await _rows_match_counts(pool, run_id)
