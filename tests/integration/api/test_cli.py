"""The HTTP client commands against a real server: campaigns, trigger, profiles import."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.cli.main import main
from tests.integration.api.conftest import Api

CAMPAIGN_TOML = """
id = "toml-sale"
name = "TOML sale"
channel = "sms"
audience = "fans"
[content]
body = "Hi {{ profile.id }}"
[schedule]
start_at = 2026-12-01T09:00:00+01:00
end_at = 2026-12-31T00:00:00Z
[throttle]
rate_per_second = 10
"""


async def cli(api: Api, capsys: pytest.CaptureFixture[str], *argv: str,
              token: str | None = None) -> tuple[int, str, str]:
    """Run `campaignd ARGV` (in a thread: it runs its own event loop); (code, out, err)."""
    url = str(api.client.make_url("")).rstrip("/")

    def call() -> int:
        try:
            return main([*argv, "--url", url, "--token", token or api.admin_token])
        except SystemExit as exc:
            return int(exc.code or 0)

    capsys.readouterr()  # drop what the set-up printed
    with capture_logs():  # the server's log lines would mix with the command's output
        code = await asyncio.to_thread(call)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_campaigns_create_from_toml_list_show_activate_stop(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    definition = tmp_path / "campaign.toml"
    definition.write_text(CAMPAIGN_TOML)
    code, out, _ = await cli(api, capsys, "campaigns", "create", "-f", str(definition))
    assert code == 0
    created = json.loads(out)
    assert created["schedule"]["start_at"] == "2026-12-01T08:00:00Z"
    code, out, _ = await cli(api, capsys, "campaigns", "list")
    assert code == 0
    assert "toml-sale" in out and "draft" in out
    code, out, _ = await cli(api, capsys, "campaigns", "show", "toml-sale")
    assert json.loads(out)["id"] == "toml-sale"
    code, out, _ = await cli(api, capsys, "campaigns", "activate", "toml-sale")
    assert (code, out.strip()) == (0, "toml-sale: activated (status live)")
    code, out, _ = await cli(api, capsys, "campaigns", "stop", "toml-sale")
    assert (code, out.strip()) == (0, "toml-sale: stopped (status stopped)")


async def test_api_errors_are_one_line_with_the_code_and_exit_1(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = await cli(api, capsys, "campaigns", "stop", "nope")
    assert code == 1
    assert err == "campaignd: 404 not_found: no campaign with this id\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "channel": "fax", "content": {}}))
    code, _, err = await cli(api, capsys, "campaigns", "create", "-f", str(bad))
    assert code == 1
    assert err.startswith("campaignd: 422 validation_error: channel:")
    code, _, err = await cli(api, capsys, "campaigns", "list", token="cmpd_wrong")
    assert (code, err.split(":")[1].strip()) == (1, "401 unauthorized")


async def test_trigger_with_context_key_and_dry_run(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    code, out, _ = await cli(api, capsys, "trigger", "spring-sale", "--dry-run")
    assert code == 0
    assert json.loads(out)["targeted"] == 1
    args = ("trigger", "spring-sale", "--context", '{"promo": "X"}', "--idempotency-key", "k1")
    code, out, _ = await cli(api, capsys, *args)
    first = json.loads(out)
    code, out, _ = await cli(api, capsys, *args)
    assert json.loads(out)["run_id"] == first["run_id"]
    context = await api.pool.fetchval("SELECT context FROM runs")
    assert context == {"promo": "X"}
    code, _, err = await cli(api, capsys, "trigger", "spring-sale", "--context", "[1]")
    assert (code, err) == (1, "campaignd: --context must be a JSON object\n")


async def test_profiles_import_streams_the_file(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await api.json("PUT", "/v1/audiences/fans", 201)
    people = tmp_path / "people.csv"
    people.write_text("id,email,city\n" + "".join(
        f"p{i},p{i}@example.com,Lyon\n" for i in range(5000)) + "bad id,x,y\n")
    code, out, _ = await cli(api, capsys, "profiles", "import", str(people), "--audience", "fans")
    assert code == 0
    assert out.splitlines()[:3] == [
        "imported 5000 of 5001 lines (5000 new, 0 updated, 1 rejected)",
        "added 5000 to audience fans",
        "  line 5002: id: String should match pattern '^[A-Za-z0-9._:@-]{1,128}$'",
    ]
    assert (await api.json("GET", "/v1/audiences/fans", 200))["size"] == 5000
    code, _, err = await cli(api, capsys, "profiles", "import", str(tmp_path / "x.txt"))
    assert code == 1 and "--format" in err


async def test_campaigns_pause_resume_and_set_rate(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    definition = tmp_path / "campaign.toml"
    definition.write_text(CAMPAIGN_TOML)
    assert (await cli(api, capsys, "campaigns", "create", "-f", str(definition)))[0] == 0
    assert (await cli(api, capsys, "campaigns", "activate", "toml-sale"))[0] == 0
    code, out, _ = await cli(api, capsys, "campaigns", "pause", "toml-sale")
    assert (code, out.strip()) == (0, "toml-sale: paused (status paused)")
    code, out, _ = await cli(api, capsys, "campaigns", "set-rate", "toml-sale", "25",
                             "--dry-run")
    assert code == 0
    assert "nothing changed" in out and "no running run to re-plan" in out
    code, out, _ = await cli(api, capsys, "campaigns", "set-rate", "toml-sale", "25")
    assert code == 0 and "rate 25/s (status paused)" in out
    code, out, _ = await cli(api, capsys, "campaigns", "resume", "toml-sale", "--dry-run")
    assert code == 0 and "would resume" in out
    assert (await api.json("GET", "/v1/campaigns/toml-sale", 200))["status"] == "paused"
    code, out, _ = await cli(api, capsys, "campaigns", "resume", "toml-sale")
    assert (code, out.strip()) == (0, "toml-sale: resumed (status live)")
    code, _, err = await cli(api, capsys, "campaigns", "set-rate", "toml-sale", "0")
    assert code != 0 and "RATE" in err
    code, _, err = await cli(api, capsys, "campaigns", "set-rate", "toml-sale", "5000")
    assert code == 1 and "throttle.rate_per_second" in err
