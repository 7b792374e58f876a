"""The loop closed: the daemon sends SMS through a stand-in Twilio, which calls each message's
StatusCallback back, signed as Twilio signs; the run report ends up counting deliveries.

The stand-in posts the statuses right after accepting each message, so most arrive before
the daemon has written the send's outcome: they are kept and applied once it is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

from tests.acceptance.conftest import DaemonFactory

TOKEN = "acceptance-auth-token-0123456789"
RECIPIENTS = 30


@dataclass
class CallingBackTwilio:
    """Accepts messages; then posts `sent` and a final status to their StatusCallback."""

    callbacks: list[int] = field(default_factory=list)  # the daemon's answers
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    session: aiohttp.ClientSession | None = None
    count: int = 0

    async def messages(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.count += 1
        sid = f"SM{self.count:032d}"
        final = "undelivered" if form["To"].endswith("7") else "delivered"
        task = asyncio.get_running_loop().create_task(
            self._call_back(form["StatusCallback"], sid, form["To"], final),
            name="twilio.callback")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"sid": sid, "status": "queued"}, status=201)

    async def _call_back(self, url: str, sid: str, to: str, final: str) -> None:
        assert self.session is not None
        for status in ("sent", final):
            params = {"MessageSid": sid, "MessageStatus": status, "To": to,
                      "AccountSid": "AC1", "ApiVersion": "2010-04-01"}
            if status == "undelivered":
                params["ErrorCode"] = "30005"
            signature = RequestValidator(TOKEN).compute_signature(url, params)
            async with self.session.post(url, data=params,
                                         headers={"X-Twilio-Signature": signature}) as answer:
                self.callbacks.append(answer.status)


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[CallingBackTwilio, str]]:
    fake = CallingBackTwilio()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", fake.messages)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.session = aiohttp.ClientSession()
    yield fake, str(server.make_url("")).rstrip("/")
    for task in list(fake.tasks):
        task.cancel()
    await asyncio.gather(*fake.tasks, return_exceptions=True)
    await fake.session.close()
    await server.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.timeout(120)
async def test_twilio_status_callbacks_come_back_and_are_counted(
        daemon_factory: DaemonFactory, twilio: tuple[CallingBackTwilio, str]) -> None:
    fake, fake_url = twilio
    port = _free_port()
    daemon = daemon_factory(f"""
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
[providers.tw]
kind = "twilio"
account_sid = "AC1"
auth_token = "{TOKEN}"
from = "+15005550006"
base_url = "{fake_url}"
[channels]
sms = "tw"
""")
    await daemon.start()
    async with daemon.client() as http:
        created = await http.post("/v1/campaigns", json={
            "id": "sms-loop", "name": "loop", "channel": "sms", "content": {"body": "Hi"}})
        assert created.status == 201, await created.text()
        assert (await http.post("/v1/campaigns/sms-loop/activate")).status == 200
        recipients = [{"profile_id": f"p{i}", "phone": f"+336000000{i:02d}"}
                      for i in range(RECIPIENTS)]
        triggered = await http.post("/v1/campaigns/sms-loop/triggers",
                                    json={"recipients": recipients})
        assert triggered.status == 202, await triggered.text()
        run_id = (await triggered.json())["run_id"]
        bounced = sum(1 for r in recipients if r["phone"].endswith("7"))
        expected = {"delivered": RECIPIENTS - bounced, "bounced": bounced, "failed": 0,
                    "unknown": 0}
        async with asyncio.timeout(60):
            while True:
                report = await (await http.get(f"/v1/runs/{run_id}")).json()
                if report["counts"]["delivery"] == expected:
                    break
                await asyncio.sleep(0.2)
        assert report["counts"]["sent"] == RECIPIENTS
        page = await (await http.get(f"/v1/runs/{run_id}/recipients?delivery=bounced")).json()
        assert [item["delivery"]["reason"] for item in page["items"]] == ["twilio_30005"] * bounced
        assert all(item["provider_message_id"].startswith("SM") for item in page["items"])
    assert set(fake.callbacks) == {200}, fake.callbacks  # every callback was verified
    assert await daemon.terminate() == 0
    assert daemon.events("receipt.rejected") == []
    stopped = daemon.events("receipts.stopped")
    results = {k: stopped[0].get(k, 0) for k in ("applied", "unchanged", "pending", "unknown")}
    assert sum(results.values()) == 2 * RECIPIENTS and results["unknown"] == 0, stopped
    # Early ones were matched by the reconciler, or superseded by a later status.
    assert stopped[0]["reconciled"] <= results["pending"]
