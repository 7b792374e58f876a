"""The run start in SQL: the preview agrees with the real freeze, and a large audience
freezes in chunks without the daemon's memory growing with it."""

from __future__ import annotations

import resource
import time
from datetime import UTC, datetime, timedelta

import pytest

from daemon.api.context import AppContext
from daemon.engine.preview import CampaignNotFound, preview_trigger
from daemon.infra.clock import FakeClock
from daemon.infra.config import Config
from daemon.infra.metrics import Metrics
from daemon.store import Pool, freeze
from daemon.store import engine as engine_store
from daemon.store import runs as run_store
from tests.integration.engine.conftest import add_profiles, make_campaign, run_row, trigger

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _ctx(pool: Pool, **limits: float) -> AppContext:
    config = Config.model_validate({"limits": limits} if limits else {})
    return AppContext(config=config, pool=pool, clock=FakeClock(NOW), metrics=Metrics())


async def test_the_preview_counts_what_the_run_will_freeze(pool: Pool) -> None:
    await make_campaign(pool, "c1", rate=2, start_at=NOW + timedelta(hours=1))
    await add_profiles(pool, 30, audience="a1")
    await pool.execute("UPDATE profiles SET sub_sms = false WHERE id IN ('p1', 'p2')")
    await pool.execute("UPDATE profiles SET phone = NULL WHERE id = 'p3'")
    ctx = _ctx(pool, time_cap=10)
    preview = await preview_trigger(ctx, "c1", audience_id="a1", recipients=None)
    assert preview == {
        "targeted": 30, "eligible": 27,
        "excluded": {"time_cap": 7, "campaign_end": 0, "opted_out": 2, "no_address": 1,
                     "duplicate": 0, "cancelled": 0},
        "rate_per_second": 2,
        "scheduled_for": NOW + timedelta(hours=1),
        "deadline": NOW + timedelta(hours=1, seconds=10),
        "deadline_reason": "time_cap",
        "expected_duration_seconds": 10.0,
        "expected_end": NOW + timedelta(hours=1, seconds=10),
        "capacity": 20, "open_intervals": None,
    }
    assert await pool.fetchval("SELECT count(*) FROM runs") == 0  # nothing created
    run_id = await trigger(pool, "c1", audience="a1", scheduled_for=NOW + timedelta(hours=1))
    campaign = await engine_store.load_campaign(pool, "c1")
    assert campaign is not None
    run = await engine_store.load_run(pool, run_id)
    assert run is not None
    started = await engine_store.start_run(pool, run, campaign, now=NOW, time_cap=10)
    assert started is not None
    assert started.counts.targeted == preview["targeted"]
    assert started.counts.eligible == preview["eligible"]
    assert started.counts.excluded == preview["excluded"]
    assert started.plan.deadline == preview["deadline"]


async def test_the_preview_of_inline_recipients_applies_the_same_rules(pool: Pool) -> None:
    await make_campaign(pool, "c1", channel="push",
                        content={"title": "t", "body": "b"}, end_at=NOW + timedelta(days=1))
    await add_profiles(pool, 2)
    await pool.execute("UPDATE profiles SET push_tokens = '{tok}' WHERE id = 'p0'")
    recipients = [{"profile_id": "p0"}, {"profile_id": "p1"},
                  {"profile_id": "new", "push_token": "t2"}, {"profile_id": "p0"},
                  {"profile_id": "p1", "push_tokens": ["t3"]}]  # a duplicate all the same
    preview = await preview_trigger(_ctx(pool), "c1", audience_id=None, recipients=recipients)
    assert (preview["targeted"], preview["eligible"]) == (5, 2)
    assert preview["excluded"]["no_address"] == 1 and preview["excluded"]["duplicate"] == 2
    assert preview["deadline_reason"] == "campaign_end"
    assert preview["expected_duration_seconds"] is None  # unthrottled: the provider's pace
    with pytest.raises(CampaignNotFound):
        await preview_trigger(_ctx(pool), "nope", audience_id=None, recipients=[])


@pytest.mark.slow
async def test_a_large_audience_freezes_in_chunks_in_flat_memory(pool: Pool) -> None:
    size = 300_000
    await make_campaign(pool, "c1", rate=2000)
    await add_profiles(pool, size, audience="a1")
    run_id = await trigger(pool, "c1", audience="a1")
    campaign = await engine_store.load_campaign(pool, "c1")
    assert campaign is not None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.monotonic()
    run = await engine_store.load_run(pool, run_id)
    assert run is not None
    started = await engine_store.start_run(pool, run, campaign, now=datetime.now(UTC),
                                           time_cap=100, size=size)
    first = time.monotonic() - began
    assert started is not None and started.freezing
    # The members still to freeze are counted as pending until their chunk comes.
    assert (started.counts.targeted, started.counts.pending) == (size, size)
    chunks = 0
    while await freeze.advance(pool, run_id, now=datetime.now(UTC)) is not None:
        chunks += 1
    seconds = time.monotonic() - began
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"\nfirst chunk in {first:.3f} s; froze {size} recipients in {seconds:.2f} s "
          f"({size / seconds:,.0f}/s, {chunks} more chunks); client memory +{grown_kib} KiB")
    row = await run_row(pool, run_id)
    assert (row["targeted"], row["pending"], row["excluded_time_cap"]) == (size, 200_000,
                                                                           100_000)
    assert await pool.fetchval(
        "SELECT count(*) FROM run_recipients WHERE run_id = $1", run_id) == size
    assert grown_kib < 20_000  # the recipients never pass through Python


async def test_runs_with_one_plan_start_together_each_on_its_own(pool: Pool) -> None:
    await make_campaign(pool, "c1", rate=1)  # capacity 2 (a 2 s time cap)
    await add_profiles(pool, 3)
    first = await trigger(pool, "c1", scheduled_for=NOW, recipients=[
        {"profile_id": "p0"}, {"profile_id": "p1"}, {"profile_id": "p0"},
        {"profile_id": "p2"}, {"profile_id": "new", "phone": "+33600000009"}])
    second = await trigger(pool, "c1", scheduled_for=NOW, recipients=[
        {"profile_id": "p1"}, {"profile_id": "p0"}])
    gone = await trigger(pool, "c1", scheduled_for=NOW, recipients=[{"profile_id": "p2"}])
    assert await run_store.cancel(pool, gone, NOW)
    campaign = await engine_store.load_campaign(pool, "c1")
    runs = [await engine_store.load_run(pool, run_id) for run_id in (first, second, gone)]
    assert campaign is not None and all(runs)
    started = await engine_store.start_inline_runs(
        pool, [run for run in runs if run is not None], campaign, now=NOW, time_cap=2)
    assert sorted(s.run.id for s in started) == sorted([first, second])  # not the cancelled
    rows = await pool.fetch("SELECT run_id, position, profile_id, status, reason "
                            "FROM run_recipients ORDER BY run_id, position")
    assert [(r["position"], r["profile_id"], r["reason"]) for r in rows
            if r["run_id"] == first] == [
        (0, "p0", None), (1, "p1", None), (2, "p0", "duplicate"), (3, "p2", "time_cap"),
        (4, "new", "time_cap")]
    assert [(r["position"], r["profile_id"], r["reason"]) for r in rows
            if r["run_id"] == second] == [(0, "p1", None), (1, "p0", None)]
    by_id = {s.run.id: s.counts for s in started}
    assert (by_id[first].targeted, by_id[first].pending, by_id[first].excluded["duplicate"],
            by_id[first].excluded["time_cap"]) == (5, 2, 1, 2)
    assert (by_id[second].targeted, by_id[second].pending) == (2, 2)
    for run_id in (first, second):
        row = await run_row(pool, run_id)
        assert (row["status"], row["targeted"], row["pending"]) == (
            "running", by_id[run_id].targeted, by_id[run_id].pending)


async def test_runs_of_different_plans_started_together_each_get_their_own(pool: Pool) -> None:
    await make_campaign(pool, "c1", rate=1)
    await add_profiles(pool, 1)
    later = NOW + timedelta(seconds=30)
    due = await trigger(pool, "c1", scheduled_for=NOW - timedelta(seconds=5),
                        recipients=[{"profile_id": "p0"}])
    ahead = await trigger(pool, "c1", scheduled_for=later, recipients=[{"profile_id": "p0"}])
    campaign = await engine_store.load_campaign(pool, "c1")
    runs = [await engine_store.load_run(pool, run_id) for run_id in (due, ahead)]
    assert campaign is not None and all(runs)
    started = await engine_store.start_inline_runs(
        pool, [run for run in runs if run is not None], campaign, now=NOW, time_cap=2)
    by_id = {s.run.id: s for s in started}
    assert by_id[due].plan.started_at == NOW and by_id[ahead].plan.started_at == later
    for run_id, at in ((due, NOW), (ahead, later)):
        row = await run_row(pool, run_id)
        assert (row["started_at"], row["deadline"]) == (at, at + timedelta(seconds=2))
