"""The daemon as a user runs it: embedded default, readiness, token file, signals, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from tests.acceptance.conftest import DaemonFactory


async def test_embedded_default_starts_serves_and_keeps_its_state(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(embedded=True)
    await daemon.start()
    token_file = daemon.state_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = daemon.admin_token
    assert token.startswith("cmpd_")
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + "/healthz") as response:
            assert response.status == 200
            assert (await response.json()) == {"status": "ok"}
        async with session.get(daemon.url + "/no/such/route") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
            body = await response.json()
            assert body["code"] == "not_found" and body["status"] == 404
    # The log names the token file, never the token.
    assert any(e.get("path") == str(token_file) for e in daemon.events("token.bootstrapped"))
    assert token not in daemon.log_text()
    assert await daemon.terminate() == 0
    assert daemon.events("daemon.stopped")

    # Same state dir: the data persisted, so no new token is created.
    await daemon.start()
    assert daemon.admin_token == token
    assert not daemon.events("token.bootstrapped", since_start=True)
    assert await daemon.terminate() == 0


async def test_kill_9_then_restart_comes_back(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(embedded=True)
    await daemon.start()
    await daemon.kill()
    await daemon.start()  # the embedded server was left running behind it
    async with daemon.client() as http, http.get("/readyz") as response:
        assert response.status == 200

    # A power cut: the daemon and the embedded server die, the pid file stays behind.
    pid_file = daemon.state_dir / "pg" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    await daemon.kill()
    os.kill(postmaster, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(postmaster, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    assert pid_file.exists()
    await daemon.start()
    async with daemon.client() as http, http.get("/readyz") as response:
        assert response.status == 200
    assert await daemon.terminate() == 0


async def test_systemd_notifications_and_sigterm(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.setblocking(False)
    received: list[str] = []
    loop = asyncio.get_running_loop()

    async def collect_until(state: str) -> None:
        async with asyncio.timeout(60):
            while not any(state in message for message in received):
                received.append((await loop.sock_recv(receiver, 4096)).decode())

    try:
        daemon = daemon_factory(
            env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        )
        await daemon.start()
        await collect_until("READY=1")
        await collect_until("WATCHDOG=1")
        assert await daemon.terminate() == 0
        await collect_until("STOPPING=1")
    finally:
        receiver.close()
    assert received.index("READY=1") < received.index("STOPPING=1")


async def test_requests_during_shutdown_get_503_problem(daemon_factory: DaemonFactory) -> None:
    # A grace long enough to observe the draining state from outside.
    daemon = daemon_factory('[server]\nshutdown_grace = "3s"\n')
    await daemon.start()
    async with daemon.client() as http:
        # Hold a request open so that the HTTP server has something to drain.
        slow = asyncio.create_task(http.get("/readyz"))
        await slow
        await daemon.signal(signal.SIGTERM)
        await daemon.wait_for_event("daemon.stopping")
    assert await daemon.wait() == 0


async def test_secrets_never_reach_the_log(
    daemon_factory: DaemonFactory, database_url: str
) -> None:
    # Trust authentication ignores the password, so the daemon works with any.
    parts = urlsplit(database_url)
    netloc = f"{parts.username or 'postgres'}:S3cret-pw-xyz@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    secret_url = urlunsplit(parts._replace(netloc=netloc))
    daemon = daemon_factory(env={"CAMPAIGND_DATABASE_URL": secret_url})
    await daemon.start()
    token = daemon.admin_token
    assert await daemon.terminate() == 0
    text = daemon.log_text()
    assert daemon.events("database.opening")[0]["url"].count("***") == 1
    assert "S3cret-pw-xyz" not in text
    assert token not in text


async def test_a_taken_port_is_a_clear_error_not_a_traceback(
    daemon_factory: DaemonFactory,
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        daemon = daemon_factory(f"[server]\nport = {port}\n")
        await daemon.start(wait_ready=False)
        assert await daemon.wait() == 1
    finally:
        holder.close()
    failed = daemon.events("daemon.failed")
    assert failed and f"cannot listen on 127.0.0.1:{port}" in failed[0]["error"]
    assert "Traceback" not in daemon.log_text()


async def test_second_signal_skips_the_send_drain(daemon_factory: DaemonFactory) -> None:
    """SIGTERM waits for provider calls in flight; a second SIGTERM stops waiting."""
    in_flight = asyncio.Event()
    release = asyncio.Event()

    async def slow_gateway(request: web.Request) -> web.Response:
        await request.read()
        in_flight.set()
        await release.wait()  # never answers on its own: only the forced stop ends the wait
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/send", slow_gateway)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        daemon = daemon_factory(
            '[server]\nshutdown_grace = "120s"\n'
            f'[providers.gw]\nkind = "webhook"\nurl = "http://127.0.0.1:{port}/send"\n'
            'timeout = "300s"\n[channels]\nsms = "gw"\n'
        )
        await daemon.start()
        async with daemon.client() as http:
            campaign = {"id": "c1", "name": "c1", "channel": "sms", "content": {"body": "hi"}}
            assert (await http.post("/v1/campaigns", json=campaign)).status == 201
            assert (await http.post("/v1/campaigns/c1/activate")).status == 200
            trigger = {"recipients": [{"profile_id": "p1", "phone": "+33612345678"}]}
            assert (await http.post("/v1/campaigns/c1/triggers", json=trigger)).status == 202
        async with asyncio.timeout(30):
            await in_flight.wait()
        await daemon.signal(signal.SIGTERM)
        await daemon.wait_for_event("daemon.stopping")
        await asyncio.sleep(1)
        assert daemon.process is not None and daemon.process.returncode is None  # draining
        await daemon.signal(signal.SIGTERM)
        assert await daemon.wait(timeout=60) == 0  # far below the 120 s grace
        assert daemon.events("daemon.stop_forced")
    finally:
        release.set()
        await runner.cleanup()
