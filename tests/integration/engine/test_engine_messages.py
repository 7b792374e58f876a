"""What the engine hands a provider: unsubscribe links on email, one idempotency key per
recipient, and dead push tokens removed from the profiles afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon import unsubscribe
from daemon.api.context import AppContext
from daemon.engine.stage import Engine
from daemon.errors import PermanentError
from daemon.infra.clock import SystemClock
from daemon.infra.metrics import Metrics
from daemon.models import Channel
from daemon.providers.base import Message, Provider, SendResult
from daemon.providers.settings import LogProviderSettings
from daemon.store import Pool
from tests.integration.engine.conftest import (
    add_profiles,
    engine_config,
    make_campaign,
    trigger,
    wait_run_status,
)


class Recording:
    """A provider that keeps every message; push tokens named `dead*` are reported dead."""

    name = "recording"
    settings = LogProviderSettings()
    writes_unsubscribe_url = False

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.metrics = Metrics()  # the engine's

    async def start(self) -> None: ...

    async def probe(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: Message) -> SendResult:
        self.messages.append(message)
        dead = tuple(t for t in message.to.push_tokens if t.startswith("dead"))
        if dead and len(dead) == len(message.to.push_tokens):
            raise PermanentError("fcm_UNREGISTERED: every token", invalid_push_tokens=dead)
        return SendResult(provider_message_id="m-" + message.idempotency_key,
                          invalid_push_tokens=dead)


class Source:
    def __init__(self, provider: Recording) -> None:
        self.provider = provider

    def for_channel(self, channel: Channel) -> Provider:
        return self.provider


@contextlib.asynccontextmanager
async def _running(pool: Pool, tmp_path: Path, provider: Recording) -> AsyncIterator[None]:
    config = engine_config(None, server={"public_url": "https://mail.example"})
    config = config.model_copy(update={"state_dir": tmp_path})
    ctx = AppContext(config=config, pool=pool, clock=SystemClock(), metrics=provider.metrics)
    engine = Engine(ctx, providers=Source(provider))
    await engine.start()
    try:
        yield
    finally:
        await engine.stop(5.0, asyncio.Event())


@pytest.fixture
async def recording_engine(pool: Pool, tmp_path: Path) -> AsyncIterator[Recording]:
    provider = Recording()
    async with _running(pool, tmp_path, provider):
        yield provider


async def test_each_email_carries_its_own_unsubscribe_link(
    pool: Pool, recording_engine: Recording
) -> None:
    await make_campaign(pool, "c1", channel="email",
                        content={"from": "a@b.c", "subject": "Hi", "text": "{{ unsubscribe_url }}"})
    await add_profiles(pool, 3, audience="a1")
    run_id = await trigger(pool, "c1", audience="a1")
    assert (await wait_run_status(pool, run_id))["sent"] == 3
    key = await unsubscribe.load_key(pool)
    for message in recording_engine.messages:
        assert message.unsubscribe_url == unsubscribe.url_for(
            "https://mail.example", key, message.profile_id, Channel.EMAIL, message.to.email)
        assert message.content["text"] == message.unsubscribe_url  # templates see it too
    assert sorted(m.idempotency_key for m in recording_engine.messages) == [
        f"{run_id}:{n}" for n in range(3)]


@pytest.mark.parametrize("writes", [True, False])
async def test_an_unread_unsubscribe_link_is_signed_only_for_a_provider_that_writes_it(
    pool: Pool, tmp_path: Path, writes: bool
) -> None:
    provider = Recording()
    provider.writes_unsubscribe_url = writes  # SMTP's List-Unsubscribe
    async with _running(pool, tmp_path, provider):
        await make_campaign(pool, "c1", channel="email",
                            content={"from": "a@b.c", "subject": "Hi", "text": "no link"})
        await add_profiles(pool, 2, audience="a1")
        run_id = await trigger(pool, "c1", audience="a1")
        assert (await wait_run_status(pool, run_id))["sent"] == 2
    key = await unsubscribe.load_key(pool)
    assert [m.unsubscribe_url for m in provider.messages] == [
        unsubscribe.url_for("https://mail.example", key, m.profile_id, Channel.EMAIL, m.to.email)
        if writes else None for m in provider.messages]


async def test_outcomes_are_counted_in_the_metrics(
    pool: Pool, recording_engine: Recording
) -> None:
    await make_campaign(pool, "c1", channel="push", content={"title": "t", "body": "b"})
    await add_profiles(pool, 5, audience="a1")
    await pool.execute("UPDATE profiles SET push_tokens = CASE WHEN id IN ('p0', 'p1') "
                       "THEN '{dead}'::text[] ELSE '{live}'::text[] END")
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["failed"]) == (3, 2)
    registry = recording_engine.metrics.registry
    labels = {"campaign_id": "c1", "channel": "push"}
    async with asyncio.timeout(5):  # counted as the outcomes' writes land
        while registry.get_sample_value("campaignd_messages_total", {
                **labels, "outcome": "failed", "reason": "rejected"}) != 2:
            await asyncio.sleep(0.05)
    assert registry.get_sample_value("campaignd_messages_total", {
        **labels, "outcome": "sent", "reason": ""}) == 3


async def test_dead_push_tokens_are_removed_from_the_profiles(
    pool: Pool, recording_engine: Recording
) -> None:
    await make_campaign(pool, "c1", channel="push", content={"title": "t", "body": "b"})
    await add_profiles(pool, 2, audience="a1")
    await pool.execute("UPDATE profiles SET push_tokens = '{live0,dead0}' WHERE id = 'p0'")
    await pool.execute("UPDATE profiles SET push_tokens = '{dead1}' WHERE id = 'p1'")
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id)
    assert (row["sent"], row["failed"]) == (1, 1)
    async with asyncio.timeout(5):
        while await pool.fetchval(
                "SELECT count(*) FROM profiles WHERE 'dead0' = ANY(push_tokens) "
                "OR 'dead1' = ANY(push_tokens)"):
            await asyncio.sleep(0.05)
    tokens = {r["id"]: r["push_tokens"] for r in await pool.fetch(
        "SELECT id, push_tokens FROM profiles ORDER BY id")}
    assert tokens == {"p0": ["live0"], "p1": []}
