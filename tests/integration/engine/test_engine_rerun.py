"""A rerun (SPEC §9.4) executed by the engine: exactly the recipients the time cap excluded,
with their frozen data and the trigger context, stored opt-outs checked again."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.store import Pool
from daemon.store import rerun as rerun_store
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    add_profiles,
    assert_counts_add_up,
    engine_config,
    make_campaign,
    recipient_rows,
    trigger,
    wait_run_status,
)


async def test_a_rerun_of_time_cap_sends_exactly_the_excluded(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=10)
    await add_profiles(pool, 60)
    recipients = [{"profile_id": f"p{n}", "phone": f"+1555{n:07d}", "context": {"n": n}}
                  for n in range(60)]
    first = await start_engine(engine_config(gateway, limits={"time_cap": 2}))
    source = await trigger(pool, "c1", recipients=recipients, context={"promo": "R2"})
    done = await wait_run_status(pool, source, timeout=30)
    assert (done["sent"], done["excluded_time_cap"], done["end_reason"]) == (20, 40, "time_cap")
    excluded = [r["profile_id"] for r in await recipient_rows(pool, source)
                if r["reason"] == "time_cap"]
    assert excluded == [f"p{n}" for n in range(20, 60)]
    await first.stop()
    sent_before = len(gateway.arrivals)
    assert sent_before == 20

    # p30 unsubscribed meanwhile: the rerun's freeze excludes it.
    await pool.execute("UPDATE profiles SET sub_sms = false WHERE id = 'p30'")
    made = await rerun_store.create_rerun(
        pool, source, rerun_store.Selection.of(["time_cap"]), run_id="run_rerun1",
        idempotency_key=None, request_hash="h", now=datetime.now(UTC))
    assert made is not None and made.run_id == "run_rerun1"
    await start_engine(engine_config(gateway, limits={"time_cap": 60}))
    row = await wait_run_status(pool, "run_rerun1", timeout=30)
    assert_counts_add_up(row)
    assert (row["targeted"], row["sent"], row["excluded_opted_out"], row["end_reason"]) == (
        40, 39, 1, "delivered")
    rows = await recipient_rows(pool, "run_rerun1")
    assert [r["profile_id"] for r in rows] == excluded
    assert [r["position"] for r in rows] == list(range(40))
    assert rows[0]["phone"] == "+15550000020" and rows[0]["context"] == {"n": 20}
    assert rows[10]["status"] == "excluded" and rows[10]["reason"] == "opted_out"
    arrivals = gateway.arrivals[sent_before:]
    assert sorted(a.body["profile_id"] for a in arrivals) == sorted(
        p for p in excluded if p != "p30")
    by_profile = {a.body["profile_id"]: a.body for a in arrivals}
    assert by_profile["p45"]["to"] == {"phone": "+15550000045"}
    assert by_profile["p45"]["content"]["body"] == "Hi N45 R2"
