"""The deliverer against real PostgreSQL and a real HTTP receiver that verifies every request
with the `standardwebhooks` reference package: order per run, no event sent twice at once by
two deliverers, retries with the same webhook-id, backoff, giving up, pruning."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from daemon.infra.clock import Clock, FakeClock, SystemClock
from daemon.infra.config import NotificationsSection
from daemon.infra.metrics import Metrics
from daemon.models import NotificationEvent
from daemon.notifications.deliverer import NotificationDeliverer
from daemon.notifications.sender import Sender, backoff
from daemon.store import Pool
from daemon.store import notifications as store

SECRET = "whsec_" + base64.b64encode(b"notification-test-key-32-bytes!!").decode()


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]


@dataclass
class Receiver:
    """Verifies each POST (a bad one: 401 and counted in `refused`); `answer(n)` decides the
    status of the n-th; `hold` seconds before answering; tracks what is in flight."""

    answer: Callable[[int], int] = lambda _: 200
    hold: float = 0.0
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    in_flight: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/events"))

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = Webhook(SECRET).verify(raw, dict(request.headers))
        except Exception:
            self.refused += 1
            return web.Response(status=401)
        webhook_id = request.headers["webhook-id"]
        if webhook_id in self.in_flight:
            self.overlaps.append(webhook_id)
        self.in_flight.add(webhook_id)
        try:
            index = len(self.received)
            self.received.append(Received(webhook_id, int(request.headers["webhook-timestamp"]),
                                          body))
            if self.hold:
                await asyncio.sleep(self.hold)
            return web.Response(status=self.answer(index))
        finally:
            self.in_flight.discard(webhook_id)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/events", state.handle)
    state.server = TestServer(app, host="127.0.0.1", port=0)
    await state.server.start_server()
    yield state
    await state.server.close()


@pytest.fixture
def clock() -> FakeClock:
    # Near the real time: the reference verifier refuses timestamps 5 minutes away from it.
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


def settings(receiver: Receiver, **extra: Any) -> NotificationsSection:
    return NotificationsSection.model_validate({"url": receiver.url, "secret": SECRET, **extra})


async def add_event(pool: Pool, clock: Clock, run_id: str | None, n: int = 0,
                    kind: str = "run.started", campaign_id: str = "c1") -> str:
    """One event as the triggers write it; its webhook-id."""
    await pool.execute("SELECT notification_add($1, $2, $3, $4, $5::json)", kind, campaign_id,
                       run_id, clock.now(), {"run_id": run_id, "n": n})
    webhook_id: str = await pool.fetchval("SELECT webhook_id FROM notifications "
                                          "ORDER BY id DESC LIMIT 1")
    return webhook_id


async def outbox(pool: Pool) -> list[dict[str, Any]]:
    return [dict(row) for row in await pool.fetch("SELECT * FROM notifications ORDER BY id")]


def deliverer(pool: Pool, clock: Clock, receiver: Receiver, *, jitter: float = 0.0,
              batch: int = 64, **extra: Any) -> NotificationDeliverer:
    return NotificationDeliverer(pool, clock, Metrics(), settings(receiver, **extra),
                                 batch=batch, jitter=lambda: jitter)


async def test_events_of_a_run_go_in_order_and_a_slow_run_does_not_hold_the_others(
        pool: Pool, clock: FakeClock, receiver: Receiver) -> None:
    ids = {run: [await add_event(pool, clock, run, n) for n in range(3)] for run in ("a", "b")}
    completed = await add_event(pool, clock, None, kind="campaign.completed")
    receiver.answer = lambda index: 500 if index == 0 else 200  # a's first: refused once
    worker = deliverer(pool, clock, receiver)
    async with Sender(worker.settings, clock, lambda: 0.0) as sender:
        assert await worker.deliver_once(sender) == 2  # the head of each queue, no more
        for _ in range(10):
            await worker.deliver_once(sender)
        assert [r.body["data"]["run_id"] for r in receiver.received[:3]] == ["a", "b", "b"]
        # a's first is waiting for its retry: nothing of run a (nor the campaign event
        # written after it) has overtaken it
        assert {r.webhook_id for r in receiver.received} == {ids["a"][0], *ids["b"]}
        clock.advance(5)
        for _ in range(10):
            await worker.deliver_once(sender)
    order = [r.webhook_id for r in receiver.received if r.body["data"].get("run_id") != "b"]
    # a's first twice (500, then 200), then the rest in order; the campaign's event after
    # every earlier event of its runs
    assert order == [ids["a"][0], *ids["a"], completed]
    assert {row["status"] for row in await outbox(pool)} == {"delivered"}
    assert receiver.refused == 0


async def test_two_deliverers_never_send_one_event_at_the_same_time(
        pool: Pool, clock: FakeClock, receiver: Receiver) -> None:
    real = SystemClock()  # the stages' own loops run: a fake clock would race ahead
    events = [await add_event(pool, real, f"run{n % 8}", n) for n in range(48)]
    receiver.hold = 0.02
    first, second = (deliverer(pool, real, receiver, batch=4) for _ in range(2))
    for worker in (first, second):
        await worker.start()
    try:
        async with asyncio.timeout(60):
            while len({r.webhook_id for r in receiver.received}) < len(events):
                await asyncio.sleep(0.02)
    finally:
        for worker in (first, second):
            await worker.stop(5.0)
    assert receiver.overlaps == []
    assert sorted(r.webhook_id for r in receiver.received) == sorted(events)  # each once
    assert first.delivered > 0 and second.delivered > 0  # both took part
    for run in range(8):
        sent = [r.body["data"]["n"] for r in receiver.received
                if r.body["data"]["run_id"] == f"run{run}"]
        assert sent == sorted(sent)


async def test_a_retry_keeps_the_webhook_id_and_body_and_waits_its_backoff(
        pool: Pool, clock: FakeClock, receiver: Receiver) -> None:
    webhook_id = await add_event(pool, clock, "r1")
    receiver.answer = lambda index: 503 if index < 3 else 204
    worker = deliverer(pool, clock, receiver, jitter=0.5, retry_first="10s")
    assert worker.settings is not None
    waits = []
    async with Sender(worker.settings, clock, lambda: 0.5) as sender:
        for attempt in range(1, 5):
            assert await worker.deliver_once(sender) == 1
            [row] = await outbox(pool)
            assert row["attempts"] == attempt
            if row["status"] == "delivered":
                break
            assert row["last_error"] == "http_503"
            wait = (row["next_attempt_at"] - clock.now()).total_seconds()
            waits.append(wait)
            clock.advance(wait - 0.5)
            assert await worker.deliver_once(sender) == 0  # not due yet
            clock.advance(0.5)
    assert waits == [backoff(worker.settings, n, 0.5) for n in (1, 2, 3)] == [8.75, 17.5, 35.0]
    assert [r.webhook_id for r in receiver.received] == [webhook_id] * 4
    assert len({json.dumps(r.body) for r in receiver.received}) == 1
    assert len({r.timestamp for r in receiver.received}) == 4  # each attempt signed anew
    assert row["status"] == "delivered" and row["last_error"] is None


async def test_an_event_is_given_up_after_the_retry_period(
        pool: Pool, database_url: str, tmp_path: Path, clock: FakeClock,
        receiver: Receiver) -> None:
    created = clock.now()
    await add_event(pool, clock, "r1")
    receiver.answer = lambda _: 500
    worker = deliverer(pool, clock, receiver, retry_first="1m", retry_max="2h")
    attempts = []
    async with Sender(worker.settings, clock, lambda: 0.0) as sender:
        while True:
            [row] = await outbox(pool)
            if row["status"] != "pending":
                break
            clock.advance((row["next_attempt_at"] - clock.now()).total_seconds())
            attempts.append(clock.now() - created)
            assert await worker.deliver_once(sender) == 1
    assert row["status"] == "failed" and row["finished_at"] == clock.now()
    assert attempts[-1] == timedelta(hours=24)  # one last try at the end of the period
    assert max(b - a for a, b in itertools.pairwise(attempts)) == timedelta(hours=2)
    # (the reference verifier refuses the later ones: their timestamps are hours ahead of it)
    assert worker.failed == 1 and len(receiver.received) + receiver.refused == len(attempts)
    config = tmp_path / "campaignd.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n')
    listing = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "notifications", "list", "--failed", "-c", str(config),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await listing.communicate()
    assert listing.returncode == 0
    [header, line] = out.decode().splitlines()
    assert header.startswith("WEBHOOK ID") and row["webhook_id"] in line
    assert " failed " in line and line.endswith(row["last_error"])


async def test_delivered_events_are_pruned_and_the_backlog_gauge_counts_pending(
        pool: Pool, clock: FakeClock, receiver: Receiver) -> None:
    for n in range(3):
        await add_event(pool, clock, f"r{n}")
    worker = deliverer(pool, clock, receiver, keep_delivered="1h")
    async with Sender(worker.settings, clock, lambda: 0.0) as sender:
        assert await worker.deliver_once(sender) == 3
    await add_event(pool, clock, "r9")
    await worker._between_passes()
    assert worker._metrics.notification_backlog._value.get() == 1  # type: ignore[attr-defined]
    assert len(await outbox(pool)) == 4  # delivered a moment ago: kept
    clock.advance(3601)
    worker._pruned_at = None
    await worker._between_passes()
    assert [row["run_id"] for row in await outbox(pool)] == ["r9"]


async def test_the_stage_writes_the_settings_the_triggers_read(
        pool: Pool, clock: FakeClock, receiver: Receiver) -> None:
    worker = deliverer(pool, clock, receiver,
                       events=["run.finished", "campaign.completed"])
    await worker.start()
    try:
        row = await pool.fetchrow("SELECT * FROM notification_settings")
        assert row["enabled"] and row["events"] == ["run.finished", "campaign.completed"]
    finally:
        await worker.stop(5.0)
    off = NotificationDeliverer(pool, clock, Metrics(), None)
    await off.start()  # no [notifications]: nothing written from now on, no task
    await off.stop(5.0)
    row = await pool.fetchrow("SELECT * FROM notification_settings")
    assert not row["enabled"]
    assert NotificationEvent.RUN_FINISHED.value == "run.finished"


async def test_the_next_wake_up_is_the_head_of_a_run_not_an_event_waiting_behind_it(
        pool: Pool, clock: FakeClock, receiver: Receiver) -> None:
    await add_event(pool, clock, "r1", 0)
    receiver.answer = lambda _: 500
    worker = deliverer(pool, clock, receiver, retry_first="1m")
    async with Sender(worker.settings, clock, lambda: 0.0) as sender:
        assert await worker.deliver_once(sender) == 1  # r1's first: retried in a minute
    await add_event(pool, clock, "r1", 1)  # due now, but behind it
    assert await store.next_due(pool) == clock.now() + timedelta(minutes=1)
    assert await worker._between_passes() == clock.now() + timedelta(seconds=30)  # MAX_SLEEP


async def test_the_claim_walks_the_pending_index_not_the_history(
        pool: Pool, clock: FakeClock) -> None:
    await pool.execute(
        "INSERT INTO notifications (type, campaign_id, run_id, body, created_at, "
        "next_attempt_at, status, finished_at) "
        "SELECT 'run.finished', 'c1', 'old' || n, '{}', $1, $1, 'delivered', $1 "
        "FROM generate_series(1, 20000) n", clock.now())
    for n in range(5):
        await add_event(pool, clock, f"r{n}")
    await pool.execute("ANALYZE notifications")
    plan = "\n".join(row[0] for row in await pool.fetch(
        "EXPLAIN " + store._CLAIM, clock.now(), 64))
    assert "Seq Scan" not in plan, plan
    assert "notifications_due" in plan, plan


async def test_a_reload_turns_notifications_off_and_on(
        pool: Pool, receiver: Receiver) -> None:
    from daemon.infra.config import Config

    real = SystemClock()
    worker = deliverer(pool, real, receiver)
    await worker.start()
    try:
        await worker.reload(Config())  # the section removed
        assert worker._task is None
        assert not await pool.fetchval("SELECT enabled FROM notification_settings")
        await worker.reload(Config.model_validate(
            {"notifications": {"url": receiver.url, "secret": SECRET,
                               "events": ["run.finished"]}}))
        assert worker._task is not None and not worker._task.done()
        assert await pool.fetchval("SELECT events FROM notification_settings") == [
            "run.finished"]
        webhook_id = await add_event(pool, real, "r1")
        async with asyncio.timeout(10):
            while not receiver.received:
                await asyncio.sleep(0.02)
        assert receiver.received[0].webhook_id == webhook_id
    finally:
        await worker.stop(5.0)
