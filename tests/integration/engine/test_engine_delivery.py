"""Delivery outcomes against a gateway stand-in: retries (503, 429 + Retry-After), permanent
errors, render errors, cancel mid-run, and the recipients' freezing rules."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

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


async def test_transient_errors_are_retried_with_the_same_key_until_sent(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    seen: Counter[str] = Counter()

    def respond(body: dict[str, Any], _: int) -> web.Response:
        seen[body["id"]] += 1
        if seen[body["id"]] == 1:
            return web.Response(status=503, text="busy")
        return web.json_response({"id": "ok-" + body["id"]})

    gateway.respond = respond
    await make_campaign(pool, "c1")
    await add_profiles(pool, 10, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["failed"], row["end_reason"]) == (10, 0, "delivered")
    assert set(seen.values()) == {2}  # exactly one retry each, same idempotency key
    recipients = await recipient_rows(pool, run_id)
    assert all(r["attempts"] == 2 and r["status"] == "sent" for r in recipients)
    assert all(r["provider_message_id"] == f"ok-{run_id}:{r['position']}" for r in recipients)


async def test_retries_stop_at_max_attempts_and_permanent_errors_fail_at_once(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    def respond(body: dict[str, Any], _: int) -> web.Response:
        position = int(body["id"].rsplit(":", 1)[1])
        if position == 0:
            return web.Response(status=500, text="down")
        if position == 1:
            return web.Response(status=400, text="bad number")
        return web.json_response({})

    gateway.respond = respond
    await make_campaign(pool, "c1")
    await add_profiles(pool, 3, audience="a1")
    await start_engine(engine_config(gateway))  # delivery.max_attempts = 3
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["failed"], row["end_reason"]) == (1, 2, "delivered")
    assert_counts_add_up(row)
    first, second, third = await recipient_rows(pool, run_id)
    assert (first["status"], first["reason"], first["attempts"]) == (
        "failed", "retries_exhausted", 3)
    assert first["error"] == "http_500: down"
    assert (second["status"], second["reason"], second["attempts"]) == ("failed", "rejected", 1)
    assert second["error"] == "http_400: bad number"
    assert third["status"] == "sent"
    assert Counter(gateway.keys()) == {f"{run_id}:0": 3, f"{run_id}:1": 1, f"{run_id}:2": 1}


async def test_a_429_with_retry_after_pauses_the_provider(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    def respond(_: dict[str, Any], index: int) -> web.Response:
        if index == 2:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.json_response({})

    gateway.respond = respond
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 8, audience="a1")
    await start_engine(engine_config(gateway))
    with capture_logs() as logs:
        run_id = await trigger(pool, "c1", audience="a1")
        row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["end_reason"]) == (8, "delivered")
    times = [a.at for a in gateway.arrivals]
    assert len(times) == 9
    assert times[3] - times[2] >= 0.95  # nothing reached the provider during the pause
    throttled = next(e for e in logs if e["event"] == "provider.throttled")
    assert throttled["retry_after"] == 1.0


async def test_a_render_error_fails_that_recipient_only(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", content={"body": "Hi {{ profile.attributes.name.upper() }}"})
    await add_profiles(pool, 4, audience="a1")
    await pool.execute("UPDATE profiles SET attributes = '{}' WHERE id = 'p2'")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["failed"]) == (3, 1)
    failed = [r for r in await recipient_rows(pool, run_id) if r["status"] == "failed"]
    assert [(r["profile_id"], r["reason"], r["attempts"]) for r in failed] == [
        ("p2", "render_error", 0)]
    assert "name" in failed[0]["error"]
    assert sorted(a.body["content"]["body"] for a in gateway.arrivals) == [
        "Hi N0", "Hi N1", "Hi N3"]


async def test_a_render_over_its_budget_fails_that_recipient_and_the_run_goes_on(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    stall = ("{% if profile.id == 'p2' %}{% for i in range(100000) %}{% for j in range(3000) %}"
             "{% endfor %}{% endfor %}{% endif %}")
    grow = ("{% if profile.id == 'p3' %}{% for i in range(3000) %}{{ 'a' * 100000 }}"
            "{% endfor %}{% endif %}")
    await make_campaign(pool, "c1", content={"body": stall + grow + "Hi {{ profile.id }}"})
    await add_profiles(pool, 5, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["failed"]) == (3, 2)
    failed = {r["profile_id"]: r for r in await recipient_rows(pool, run_id)
              if r["status"] == "failed"}
    assert {p: (r["reason"], r["attempts"]) for p, r in failed.items()} == {
        "p2": ("render_error", 0), "p3": ("render_error", 0)}
    assert "more than 10000 steps" in failed["p2"]["error"]
    assert "more than" in failed["p3"]["error"]
    assert sorted(a.body["content"]["body"] for a in gateway.arrivals) == [
        "Hi p0", "Hi p1", "Hi p4"]


async def test_cancel_mid_run_stops_within_a_second(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=10)
    await add_profiles(pool, 100, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(5)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE runs SET cancel_requested_at = now() WHERE id = $1", run_id)
        await conn.execute("SELECT pg_notify('campaignd_control', $1)", run_id)
    asked = asyncio.get_running_loop().time()
    row = await wait_run_status(pool, run_id, timeout=5)
    assert asyncio.get_running_loop().time() - asked < 1.0
    assert (row["status"], row["end_reason"]) == ("cancelled", "cancelled")
    assert row["sent"] == len(gateway.arrivals)
    assert row["excluded_cancelled"] == 100 - row["sent"]
    assert_counts_add_up(row)
    calls = len(gateway.arrivals)
    await asyncio.sleep(0.5)
    assert len(gateway.arrivals) == calls


async def test_inline_recipients_are_merged_and_excluded_by_the_rules(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", channel="email",
                        content={"from": "a@b.c", "subject": "Hi {{ context.promo }}",
                                 "text": "{{ profile.attributes.tier }}"})
    await add_profiles(pool, 3)  # p0, p1, p2 with email
    await pool.execute("UPDATE profiles SET sub_email = false WHERE id = 'p1'")
    await pool.execute("UPDATE profiles SET attributes = '{\"tier\": \"gold\"}' WHERE id = 'p0'")
    recipients = [
        {"profile_id": "p0", "context": {"promo": "MINE"}},  # stored email, own context
        {"profile_id": "p1", "email": "new@example.com"},  # stored unsubscription applies
        {"profile_id": "x9", "phone": "+33600000000", "attributes": {"tier": "new"}},
        {"profile_id": "x8", "email": "x8@example.com", "attributes": {"tier": "b"}},
        {"profile_id": "p0"},  # a duplicate
        {"profile_id": "p2", "email": "override@example.com", "attributes": {"tier": "s"}},
    ]
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", recipients=recipients)
    row = await wait_run_status(pool, run_id)
    assert (row["targeted"], row["sent"], row["excluded_opted_out"], row["excluded_no_address"],
            row["excluded_duplicate"]) == (6, 3, 1, 1, 1)
    statuses = [(r["profile_id"], r["status"], r["reason"])
                for r in await recipient_rows(pool, run_id)]
    assert statuses == [("p0", "sent", None), ("p1", "excluded", "opted_out"),
                        ("x9", "excluded", "no_address"), ("x8", "sent", None),
                        ("p0", "excluded", "duplicate"), ("p2", "sent", None)]
    bodies = {a.body["profile_id"]: a.body for a in gateway.arrivals}
    assert bodies["p0"]["content"] == {"from": "a@b.c", "subject": "Hi MINE", "text": "gold"}
    assert bodies["p2"]["to"] == {"email": "override@example.com"}
    assert bodies["p2"]["content"]["text"] == "s"
    assert bodies["x8"]["content"]["subject"] == "Hi X1"


async def test_a_profile_unsubscribed_mid_run_is_not_sent(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=5)
    await add_profiles(pool, 10, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(1)
    await pool.execute("UPDATE profiles SET sub_sms = false WHERE id = 'p9'")
    row = await wait_run_status(pool, run_id, timeout=10)
    recipients = await recipient_rows(pool, run_id)
    last = recipients[-1]
    if last["status"] == "excluded":  # unless it was claimed before the change
        assert last["reason"] == "opted_out"
        assert row["excluded_opted_out"] == 1
    assert_counts_add_up(row)


async def test_content_that_does_not_compile_fails_the_run_without_a_call(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", content={"body": "Hi {{ profile.id"})  # bypassed the API
    await add_profiles(pool, 3, audience="a1")
    await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["status"], row["end_reason"], row["failed"]) == ("failed", "error", 3)
    assert {r["reason"] for r in await recipient_rows(pool, run_id)} == {"render_error"}
    assert gateway.arrivals == []
