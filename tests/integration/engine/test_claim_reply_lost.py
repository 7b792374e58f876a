"""A claim whose commit landed but whose answer was lost (the server died between the two):
the holder's next claim from the same cursor gets those recipients, it does not skip them.
Skipping them left them pending and claimed by a live holder, and the run never finished."""

from __future__ import annotations

from daemon.models import Channel
from daemon.store import Pool
from daemon.store import recipients as store
from tests.integration.engine.conftest import make_campaign

HOLDER = "host:1:me"


async def _run_of(pool: Pool, size: int) -> str:
    await make_campaign(pool, "c1")
    await pool.execute(
        "INSERT INTO runs (id, campaign_id, status, scheduled_for, started_at, targeted, "
        "pending) VALUES ('r1', 'c1', 'running', now(), now(), $1, $1)", size)
    await pool.execute(
        "INSERT INTO run_recipients (run_id, position, profile_id) "
        "SELECT 'r1', n, 'p' || n FROM generate_series(0, $1 - 1) AS n", size)
    await pool.execute(
        "INSERT INTO engine_leases (campaign_id, holder, expires_at) "
        "VALUES ('c1', $1, now() + interval '1 minute')", HOLDER)
    return "r1"


async def test_a_claim_whose_answer_was_lost_is_claimed_again_by_its_holder(
        pool: Pool) -> None:
    run_id = await _run_of(pool, 10)
    now = await pool.fetchval("SELECT now()")
    first = await store.claim_fresh(pool, "c1", HOLDER, Channel.EMAIL, [(run_id, -1, 4)], now)
    assert [c.position for c in first] == [0, 1, 2, 3]
    # That answer is lost: the holder's cursor is still -1, and it claims again.
    again = await store.claim_fresh(pool, "c1", HOLDER, Channel.EMAIL, [(run_id, -1, 4)], now)
    assert [c.position for c in again] == [0, 1, 2, 3]
    assert await pool.fetchval("SELECT count(*) FROM run_claims") == 4


async def test_another_holders_claim_is_never_taken(pool: Pool) -> None:
    run_id = await _run_of(pool, 10)
    now = await pool.fetchval("SELECT now()")
    await pool.execute(
        "INSERT INTO run_claims (run_id, position, holder, claimed_at) "
        "SELECT 'r1', n, 'host:2:other', now() FROM generate_series(0, 3) AS n")
    got = await store.claim_fresh(pool, "c1", HOLDER, Channel.EMAIL, [(run_id, -1, 4)], now)
    assert got == []
    assert await pool.fetchval(
        "SELECT count(*) FROM run_claims WHERE holder = 'host:2:other'") == 4
