"""A token's `last_used_at` (the LAST USED of `tokens list`) is written when it
authenticates, at most once a minute per token."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from daemon.cli import admin
from daemon.cli.main import main
from daemon.store import tokens
from tests.integration.api.conftest import START, Api


async def _last_used(api: Api) -> dict[str, datetime | None]:
    return {info.name: info.last_used_at for info in await tokens.list_all(api.pool)}




async def test_a_token_that_authenticates_is_marked_used(api: Api) -> None:
    assert (await _last_used(api))["test-admin"] is None
    await api.json("GET", "/v1/campaigns", 200)
    used = await _last_used(api)
    assert used["test-admin"] == START
    assert used["test-trigger"] is None  # not used yet
    await api.json("GET", "/v1/campaigns", 403, token="trigger")
    assert (await _last_used(api))["test-trigger"] == START


async def test_last_used_is_written_at_most_once_a_minute(api: Api) -> None:
    await api.json("GET", "/v1/campaigns", 200)
    # Past the token cache (5 s) but within the minute: looked up again, not rewritten.
    for _ in range(5):
        api.clock.advance(10)
        await api.json("GET", "/v1/campaigns", 200)
    assert (await _last_used(api))["test-admin"] == START
    api.clock.advance(15)  # 65 s after the first use
    await api.json("GET", "/v1/campaigns", 200)
    assert (await _last_used(api))["test-admin"] == api.clock.now()


async def test_unknown_and_revoked_tokens_write_nothing(api: Api) -> None:
    await tokens.revoke(api.pool, "test-trigger")
    await api.json("GET", "/v1/runs/run_x", 401, token="trigger")
    await api.json("GET", "/v1/runs/run_x", 401, token="cmpd_unknown")
    assert (await _last_used(api))["test-trigger"] is None


async def test_tokens_list_shows_when_a_token_was_last_used(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    await api.json("GET", "/v1/campaigns", 200)
    monkeypatch.setenv("CAMPAIGND_DATABASE_URL", api.database_url)
    monkeypatch.setenv("CAMPAIGND_STATE_DIR", str(tmp_path))
    # The command points the process's logging at stderr (capsys's, closed after the test):
    # left so, later tests would log to a closed file.
    monkeypatch.setattr(admin.logs, "configure", lambda *args, **kwargs: None)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["tokens", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["test-admin"].split()[4:6] == ["2026-03-01", "12:00:00"]
    assert lines["test-trigger"].split()[4] == "-"
