"""The daemon on each event loop (`engine.event_loop`): uvloop, the default where installed,
and asyncio's; a throttled campaign goes out whole on both, each recipient once."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import DaemonFactory
from tests.acceptance.test_engine_crash_safety import (
    Gateway,
    _balanced,
    _finished,
    _launch,
    gateway,  # noqa: F401  (the fixture)
)

pytest.importorskip("uvloop")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio", "auto"])
async def test_a_campaign_goes_out_whole_on_each_loop(
    daemon_factory: DaemonFactory, gateway: Gateway, loop: str  # noqa: F811
) -> None:
    count = 300
    daemon = daemon_factory(
        f'[engine]\nevent_loop = "{loop}"\ncheckpoint_interval = "250ms"\n'
        f'[providers.gw]\nkind = "webhook"\nurl = "{gateway.url}"\n'
        '[channels]\nemail = "gw"\n')
    await daemon.start()
    assert [e["loop"] for e in daemon.events("event_loop.chosen")] == [
        "asyncio" if loop == "asyncio" else "uvloop"]
    async with daemon.client() as http:
        run_id = await _launch(http, count, rate=300)
    report = await _finished(daemon, run_id)
    assert report["status"] == "completed" and report["counts"]["sent"] == count
    assert _balanced(report)
    keys = gateway.keys()
    assert len(keys) == count and set(keys.values()) == {1}
    assert await daemon.terminate() == 0
