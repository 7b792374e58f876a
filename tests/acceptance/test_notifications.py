"""Lifecycle notifications end to end: the real daemon POSTs its events to a receiver in
another process that verifies each with the `standardwebhooks` reference package; a 500 is
retried with the same webhook-id; a daemon killed (-9) after a run's end, before its
event got through, delivers it after a restart, with the same webhook-id."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.acceptance.conftest import DaemonFactory, DaemonProcess

SECRET = "whsec_" + base64.b64encode(b"acceptance-notification-secret!!").decode()


class RemoteReceiver:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def received(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, \
                session.get(self.base + "/received") as response:
            answer: list[dict[str, Any]] = json.loads(await response.text())
            return answer

    async def fail_next(self, count: int) -> None:
        async with aiohttp.ClientSession() as session, \
                session.post(self.base + f"/fail?count={count}") as response:
            assert response.status == 200

    async def wait_for(self, done: Callable[[list[dict[str, Any]]], bool],
                       timeout: float = 60.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while not done(received := await self.received()):
                await asyncio.sleep(0.05)
        return received


@asynccontextmanager
async def receiver_process(port: int = 0) -> AsyncIterator[RemoteReceiver]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.acceptance.faults.notification_receiver", SECRET,
        str(port), stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        bound = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
        yield RemoteReceiver(process, bound)
    finally:
        process.terminate()
        await process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(port: int) -> str:
    return (f'[notifications]\nurl = "http://127.0.0.1:{port}/events"\nsecret = "{SECRET}"\n'
            'retry_first = "200ms"\nretry_max = "500ms"\n')


async def _one_shot_run(daemon: DaemonProcess, campaign_id: str) -> str:
    async with daemon.client() as http:
        created = await http.post("/v1/campaigns", json={
            "id": campaign_id, "name": campaign_id, "channel": "sms",
            "content": {"body": "Hi"}})
        assert created.status == 201, await created.text()
        assert (await http.post(f"/v1/campaigns/{campaign_id}/activate")).status == 200
        triggered = await http.post(f"/v1/campaigns/{campaign_id}/triggers", json={
            "recipients": [{"profile_id": f"p{i}", "phone": f"+3360000000{i}"}
                           for i in range(3)]})
        assert triggered.status == 202, await triggered.text()
        run_id: str = (await triggered.json())["run_id"]
        return run_id


def _types(received: list[dict[str, Any]]) -> list[str]:
    return [entry["body"]["type"] for entry in received if entry.get("answered") == 200]


@pytest.mark.timeout(120)
async def test_signed_events_arrive_in_order_and_a_500_is_retried_with_the_same_id(
        daemon_factory: DaemonFactory) -> None:
    async with receiver_process() as receiver:
        await receiver.fail_next(1)
        daemon = daemon_factory(_config(receiver.port))
        await daemon.start()
        run_id = await _one_shot_run(daemon, "notified")
        wanted = ["run.started", "run.finished", "campaign.completed"]
        received = await receiver.wait_for(lambda got: _types(got) == wanted)
        assert all(entry["verified"] for entry in received)
        first, retry = received[0], received[1]
        assert first["answered"] == 500 and retry["answered"] == 200
        assert first["webhook_id"] == retry["webhook_id"] and first["body"] == retry["body"]
        finished = received[2]["body"]
        assert finished["data"]["run_id"] == run_id and finished["data"]["status"] == "completed"
        assert finished["data"]["counts"]["sent"] == 3
        await daemon.wait_for_event("notification.delivered", count=3)
        assert daemon.events("notification.retrying")[0]["webhook_id"] == first["webhook_id"]
        async with daemon.client() as http, http.get("/metrics") as response:
            metrics = await response.text()
        assert 'campaignd_notifications_total{outcome="delivered"} 3.0' in metrics
        assert 'campaignd_notifications_total{outcome="retried"} 1.0' in metrics
        listing = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "notifications", "list", "--config",
            str(daemon.config_path), stdout=asyncio.subprocess.PIPE, env=daemon.env)
        out, _ = await listing.communicate()
        assert listing.returncode == 0
        lines = out.decode().splitlines()
        assert len(lines) == 4 and all(" delivered " in line for line in lines[1:])
        assert await daemon.terminate() == 0


@pytest.mark.timeout(180)
async def test_a_daemon_killed_before_the_post_got_through_delivers_after_restart(
        daemon_factory: DaemonFactory, database_url: str) -> None:
    port = _free_port()  # the receiver is down: nothing listens there yet
    daemon = daemon_factory(_config(port))
    await daemon.start()
    run_id = await _one_shot_run(daemon, "crashed")
    async with asyncio.timeout(60), daemon.client() as http:
        while (await (await http.get(f"/v1/runs/{run_id}")).json())["status"] != "completed":
            await asyncio.sleep(0.05)
    async with asyncio.timeout(30), daemon.client() as http:  # the backlog is visible
        while "campaignd_notification_backlog 3.0" not in await (
                await http.get("/metrics")).text():
            await asyncio.sleep(0.1)
    tried = len(daemon.events("notification.retrying"))
    await daemon.wait_for_event("notification.retrying", count=tried + 1)  # still trying
    await daemon.kill()  # the run's end is committed, its events not delivered
    connection = await asyncpg.connect(database_url)
    try:
        outbox = {row["type"]: row["webhook_id"] for row in await connection.fetch(
            "SELECT type, webhook_id FROM notifications WHERE status = 'pending'")}
    finally:
        await connection.close()
    assert set(outbox) == {"run.started", "run.finished", "campaign.completed"}
    async with receiver_process(port) as receiver:
        await daemon.start()
        wanted = ["run.started", "run.finished", "campaign.completed"]
        received = await receiver.wait_for(lambda got: _types(got) == wanted)
        assert all(entry["verified"] for entry in received)
        assert {entry["body"]["type"]: entry["webhook_id"] for entry in received} == outbox
        assert received[1]["body"]["data"]["run_id"] == run_id
        assert await daemon.terminate() == 0
