"""`engine.event_loop`: which loop `campaignd run` runs on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from daemon.cli.main import event_loop
from daemon.errors import CampaigndError
from daemon.infra.config import Config


def test_auto_is_the_default_and_picks_uvloop_where_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert Config().engine.event_loop == "auto"
    for choice in ("auto", "uvloop"):
        factory, name = event_loop(choice)  # type: ignore[arg-type]
        assert (factory, name) == (uvloop.new_event_loop, "uvloop")
        assert factory is not None
        loop = factory()
        try:
            assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
        finally:
            loop.close()


def test_asyncio_is_asyncios_own_loop() -> None:
    assert event_loop("asyncio") == (None, "asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert event_loop("auto") == (None, "asyncio")
    with pytest.raises(CampaigndError, match="uvloop is not installed"):
        event_loop("uvloop")
