"""A claim whose commit landed but whose answer never came (the server or the connection
died between the two): the run still sends every recipient once and finishes. The fault is
injected at the driver's edge (the real statement runs and commits, then its answer is
lost); the engine and the database are real."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from daemon.engine import feeding
from daemon.store import Pool
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    add_profiles,
    engine_config,
    make_campaign,
    trigger,
    wait_run_status,
)


def _answer_lost_once(claim: Callable[..., Awaitable[list[Any]]]) -> Callable[..., Any]:
    lost: list[int] = []

    async def claim_then_lose(*args: Any) -> list[Any]:
        claimed = await claim(*args)
        if claimed and not lost:
            lost.append(len(claimed))
            raise asyncpg.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation")
        return claimed
    return claim_then_lose


@pytest.mark.parametrize("which", ["claim_fresh", "claim_retries"])
async def test_a_claim_whose_answer_was_lost_still_sends_everyone_once(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory,
    monkeypatch: pytest.MonkeyPatch, which: str,
) -> None:
    seen: Counter[str] = Counter()

    def respond(body: dict[str, Any], _: int) -> web.Response:
        seen[body["id"]] += 1
        if seen[body["id"]] == 1:  # every first call: a retry later (the retry claims)
            return web.Response(status=503, text="busy")
        return web.json_response({"id": "ok-" + body["id"]})

    gateway.respond = respond
    store = feeding.recipient_store
    monkeypatch.setattr(store, which, _answer_lost_once(getattr(store, which)))
    await make_campaign(pool, "c1")
    await add_profiles(pool, 10, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id, timeout=30)
    assert (row["sent"], row["failed"], row["pending"]) == (10, 0, 0)
    assert set(seen.values()) == {2}  # one 503 and one success each: nobody sent twice
    assert await pool.fetchval("SELECT count(*) FROM run_claims") == 0
