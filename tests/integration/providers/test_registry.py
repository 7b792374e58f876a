"""The provider registry: channel lookup, SIGHUP-style reloads that drop nothing, probes, checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from daemon.infra import config as config_module
from daemon.infra.config import Config
from daemon.models import Channel
from daemon.providers import registry as registry_module
from daemon.providers.base import Address, Message
from daemon.providers.registry import ProviderRegistry

from .smtp_sink import start_sink


@dataclass
class SlowGateway:
    """A webhook receiver that holds every request until `release` is set."""

    label: str
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrived.append(body["id"])
        await self.release.wait()
        self.answered.append(body["id"])
        return web.json_response({"id": f"{self.label}-{body['id']}"})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))


async def _gateway(label: str) -> SlowGateway:
    gateway = SlowGateway(label)
    app = web.Application()
    app.router.add_post("/hook", gateway.handle)
    gateway.server = TestServer(app, host="127.0.0.1", port=0)
    await gateway.server.start_server()
    return gateway


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[SlowGateway, SlowGateway]]:
    first, second = await _gateway("old"), await _gateway("new")
    yield first, second
    for gateway in (first, second):
        gateway.release.set()
        assert gateway.server is not None
        await gateway.server.close()


def _config(tmp_path: Path, body: str) -> Config:
    path = tmp_path / f"campaignd-{abs(hash(body))}.toml"
    path.write_text(body)
    return config_module.load(path, {})


def _hook_config(tmp_path: Path, url: str, timeout: str = "10s") -> Config:
    return _config(
        tmp_path,
        f"""
[providers.hook]
kind = "webhook"
url = "{url}"
timeout = "{timeout}"
[channels]
sms = "hook"
""",
    )


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (a few seconds at most) until `condition` holds."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _sms(n: int) -> Message:
    return Message(
        idempotency_key=f"run_1:{n}",
        campaign_id="c",
        run_id="run_1",
        channel=Channel.SMS,
        profile_id=f"p{n}",
        to=Address(phone="+33600000000"),
        content={"body": "hi"},
    )


async def test_each_channel_gets_its_configured_provider_and_a_handle_follows_it(
    tmp_path: Path, gateways: tuple[SlowGateway, SlowGateway]
) -> None:
    old, _ = gateways
    old.release.set()
    registry = ProviderRegistry(_hook_config(tmp_path, old.url))
    await registry.start()
    try:
        sms = registry.for_channel(Channel.SMS)
        assert sms.name == "hook" and sms.settings.kind == "webhook"
        assert registry.for_channel(Channel.EMAIL).name == "log"
        assert set(registry.providers()) == {"log", "hook"}
        result = await sms.send(_sms(1))
        assert result.provider_message_id == "old-run_1:1"
        # The channel moves to the implicit `log` provider: the same handle sends there now.
        await registry.reload(_config(tmp_path, f"""
[providers.hook]
kind = "webhook"
url = "{old.url}"
[channels]
sms = "log"
"""))
        assert sms.name == "log"
        assert (await sms.send(_sms(2))).provider_message_id != "old-run_1:2"
        assert old.arrived == ["run_1:1"]
    finally:
        await registry.close()
    with pytest.raises(RuntimeError, match="no started provider"):  # closed: nothing sends
        await sms.send(_sms(3))


async def test_a_reload_while_sends_are_in_flight_drops_nothing(
    tmp_path: Path, gateways: tuple[SlowGateway, SlowGateway]
) -> None:
    old, new = gateways
    new.release.set()
    registry = ProviderRegistry(_hook_config(tmp_path, old.url))
    await registry.start()
    sms = registry.for_channel(Channel.SMS)  # a handle held across the reload, as the engine would
    in_flight = [asyncio.create_task(sms.send(_sms(n))) for n in range(5)]
    await _until(lambda: len(old.arrived) == 5)

    reload = asyncio.create_task(registry.reload(_hook_config(tmp_path, new.url)))
    # New sends go to the new provider at once...
    await _until(lambda: registry.providers()["hook"].settings.model_dump().get("url") == new.url)
    assert (await sms.send(_sms(99))).provider_message_id == "new-run_1:99"
    # ...while the old instance waits for its five sends before closing.
    await asyncio.sleep(0.1)
    assert not reload.done()
    assert not any(task.done() for task in in_flight)

    old.release.set()
    results = await asyncio.gather(*in_flight)
    await reload
    assert [r.provider_message_id for r in results] == [f"old-run_1:{n}" for n in range(5)]
    assert sorted(old.answered) == sorted(f"run_1:{n}" for n in range(5))
    await registry.close()



async def test_unchanged_providers_are_kept_across_a_reload(
    tmp_path: Path, gateways: tuple[SlowGateway, SlowGateway]
) -> None:
    old, _ = gateways
    config = _hook_config(tmp_path, old.url)
    registry = ProviderRegistry(config)
    await registry.start()
    before = registry.providers()["hook"]
    await registry.reload(_hook_config(tmp_path, old.url))
    assert registry.providers()["hook"] is before
    await registry.reload(_hook_config(tmp_path, old.url, timeout="3s"))
    assert registry.providers()["hook"] is not before
    assert registry.for_channel(Channel.SMS).settings.timeout == 3.0
    await registry.close()


async def test_a_reload_that_cannot_start_keeps_the_current_providers(
    tmp_path: Path, gateways: tuple[SlowGateway, SlowGateway]
) -> None:
    old, _ = gateways
    old.release.set()
    registry = ProviderRegistry(_hook_config(tmp_path, old.url))
    await registry.start()
    broken = _config(
        tmp_path,
        f"""
[providers.hook]
kind = "webhook"
url = "{old.url}"
[providers.push]
kind = "fcm"
service_account_file = "{tmp_path / "absent.json"}"
[channels]
sms = "hook"
push = "push"
""",
    )
    with capture_logs() as logs:
        await registry.reload(broken)
    assert any(entry["event"] == "providers.reload_failed" for entry in logs)
    assert registry.for_channel(Channel.PUSH).name == "log"
    assert (await registry.for_channel(Channel.SMS).send(_sms(1))).provider_message_id
    await registry.close()


async def test_stop_waits_for_sends_within_the_grace(
    tmp_path: Path, gateways: tuple[SlowGateway, SlowGateway]
) -> None:
    old, _ = gateways
    registry = ProviderRegistry(_hook_config(tmp_path, old.url))
    await registry.start()
    send = asyncio.create_task(registry.for_channel(Channel.SMS).send(_sms(1)))
    await _until(lambda: bool(old.arrived))
    asyncio.get_running_loop().call_later(0.1, old.release.set)
    await registry.stop(grace=5.0, force=asyncio.Event())
    assert (await send).provider_message_id == "old-run_1:1"


async def test_probe_checks_each_provider_without_sending(tmp_path: Path) -> None:
    sink = await start_sink()
    closed = await start_sink()
    closed_port = closed.port
    await closed.close()
    try:
        config = _config(
            tmp_path,
            f"""
[providers.mail]
kind = "smtp"
host = "127.0.0.1"
port = {sink.port}
tls = "none"
[providers.down]
kind = "smtp"
host = "127.0.0.1"
port = {closed_port}
tls = "none"
[providers.hook]
kind = "webhook"
url = "http://127.0.0.1:9/never-called"
[providers.push]
kind = "fcm"
service_account_file = "{tmp_path / "absent.json"}"
""",
        )
        results = dict(await registry_module.probe(config))
    finally:
        await sink.close()
    assert results["log"] is None
    assert results["mail"] is None
    assert results["hook"] is None
    assert results["down"] is not None and "connection_error" in results["down"]
    assert results["push"] is not None and "cannot read" in results["push"]
    assert sink.messages == []
    assert sink.connections == 1


def test_check_reports_unusable_files(tmp_path: Path) -> None:
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    config = _config(
        tmp_path,
        f"""
[providers.push]
kind = "fcm"
service_account_file = "{tmp_path / "absent.json"}"
[providers.mail]
kind = "smtp"
host = "mail.example"
tls_ca_file = "{bad_ca}"
""",
    )
    problems = registry_module.check(config)
    assert len(problems) == 2
    assert problems[0].startswith("providers.push.service_account_file: cannot read")
    assert problems[1].startswith("providers.mail.tls_ca_file: cannot load")
    assert registry_module.check(_hook_config(tmp_path, "http://x.example/")) == []


async def test_the_stage_factory_publishes_the_registry(tmp_path: Path) -> None:
    from daemon.api.context import AppContext
    from daemon.infra.clock import FakeClock
    from daemon.infra.metrics import Metrics

    ctx = AppContext(
        config=_hook_config(tmp_path, "http://127.0.0.1:9/x"),
        pool=None,
        clock=FakeClock(),
        metrics=Metrics(),
    )
    stage = registry_module.stage(ctx)
    assert ctx.services[registry_module.SERVICE_NAME] is stage
    await stage.start()
    assert stage.for_channel(Channel.SMS).name == "hook"
    await stage.stop(grace=1.0, force=asyncio.Event())
    assert stage.providers() == {}
