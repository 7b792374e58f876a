"""The engine end to end against a gateway stand-in: start, send, record, finish."""

from __future__ import annotations

from daemon.store import Pool
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


async def test_an_unthrottled_run_sends_everyone_once_and_completes(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1")
    await add_profiles(pool, 50, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert row["status"] == "completed"
    assert row["end_reason"] == "delivered"
    assert (row["targeted"], row["sent"], row["pending"]) == (50, 50, 0)
    assert_counts_add_up(row)
    assert sorted(gateway.keys()) == sorted(f"{run_id}:{n}" for n in range(50))
    recipients = await recipient_rows(pool, run_id)
    assert {r["status"] for r in recipients} == {"sent"}
    assert all(r["attempts"] == 1 for r in recipients)
    assert await pool.fetchval("SELECT count(*) FROM run_claims") == 0  # all settled
    campaign = await pool.fetchrow("SELECT status FROM campaigns WHERE id = 'c1'")
    assert campaign is not None and campaign["status"] == "completed"  # one-shot
