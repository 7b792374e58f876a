"""Configuration: defaults, TOML + env overrides, and every kind of bad input named by key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.infra import config


def problems_of(path: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path, env or {})
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaignd.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_spec() -> None:
    c = config.load(None, {})
    assert c.server.host == "127.0.0.1" and c.server.port == 8080
    assert c.server.max_body_bytes == 1_048_576 and c.server.max_trigger_bytes == 16_777_216
    assert c.server.shutdown_grace == 30.0
    assert c.database.url is None
    assert c.limits.time_cap == 12 * 3600 and c.limits.max_rate_per_second == 2000
    assert c.limits.max_inline_recipients == 10_000
    assert c.engine.lease_ttl == 15.0 and c.engine.checkpoint_interval == 1.0
    assert c.delivery.max_attempts == 5
    assert c.delivery.backoff_base == 1.0 and c.delivery.backoff_max == 300.0
    assert c.log.level == "info" and c.log.format == "json"
    assert c.channels.email == c.channels.sms == c.channels.push == "log"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [('"250ms"', 0.25), ('"30s"', 30), ('"5m"', 300), ('"12h"', 43200), ("45", 45), ("1.5", 1.5)],
)
def test_durations_accept_strings_and_numbers(tmp_path: Path, text: str, seconds: float) -> None:
    c = config.load(write(tmp_path, f"[server]\nshutdown_grace = {text}\n"), {})
    assert c.server.shutdown_grace == seconds


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n[limits]\ntime_cap = \"1h\"\n")
    c = config.load(path, {
        "CAMPAIGND_SERVER_PORT": "9100",
        "CAMPAIGND_LIMITS_TIME_CAP": "30s",
        "CAMPAIGND_STATE_DIR": str(tmp_path / "state"),
        "CAMPAIGND_DATABASE_URL": "postgresql://u:pw@db/campaignd",
    })
    assert c.server.port == 9100
    assert c.limits.time_cap == 30
    assert c.state_dir == tmp_path / "state"
    assert c.database.url is not None
    assert c.database.url.get_secret_value() == "postgresql://u:pw@db/campaignd"


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    assert config.load(None, {"CAMPAIGND_CONFIG": str(path)}).server.port == 9001


def test_every_bad_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
prot = 1
port = "eighty"
[limits]
time_cap = "13h"
max_rate_per_second = 5000
[log]
level = "loud"
[bogus]
x = 1
""")
    found = problems_of(path)
    joined = "\n".join(found)
    for key in ("server.prot", "server.port", "limits.time_cap", "limits.max_rate_per_second",
                "log.level", "bogus"):
        assert key in joined, key
    assert len(found) == 6


def test_env_problems_name_the_variable() -> None:
    found = problems_of(env={"CAMPAIGND_SERVER_PORT": "abc", "CAMPAIGND_NOPE_X": "1"})
    assert any("CAMPAIGND_SERVER_PORT" in p and "server.port" in p for p in found)
    assert any(p.startswith("CAMPAIGND_NOPE_X") for p in found)


def test_invalid_toml_and_unreadable_file(tmp_path: Path) -> None:
    assert "invalid TOML" in problems_of(write(tmp_path, "[server\n"))[0]
    assert "cannot read" in problems_of(tmp_path / "missing.toml")[0]


def test_bad_duration_is_explained(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, '[server]\nshutdown_grace = "soon"\n'))
    assert found[0].startswith("server.shutdown_grace") and "250ms" in found[0]


def test_providers_and_channels_are_checked(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, """
[providers.hook]
kind = "webhook"
[providers.mail]
kind = "smtp"
host = "relay"
password_env = "NOT_SET_ANYWHERE"
[providers.sms]
kind = "carrier-pigeon"
[channels]
sms = "mail"
push = "ghost"
"""))
    joined = "\n".join(found)
    assert "providers.hook.url: required key is missing" in joined
    assert "providers.mail" in joined and "NOT_SET_ANYWHERE" in joined
    assert "providers.sms" in joined


def test_channel_must_name_a_provider_that_can_deliver_it(tmp_path: Path) -> None:
    found = problems_of(write(tmp_path, """
[providers.mail]
kind = "smtp"
host = "relay"
[channels]
sms = "mail"
push = "ghost"
"""))
    assert any(p.startswith("channels.sms") and "cannot deliver sms" in p for p in found)
    assert any(p.startswith("channels.push") and "no provider named 'ghost'" in p for p in found)


def test_secret_from_file_and_env(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    c = config.load(write(tmp_path, f"""
[providers.mail]
kind = "smtp"
host = "relay"
username = "u"
password_file = "{secret}"
[providers.mail2]
kind = "smtp"
host = "relay"
username = "u"
password_env = "MAIL_PW"
"""), {"MAIL_PW": "from-env"})
    mail, mail2 = c.providers["mail"], c.providers["mail2"]
    assert mail.kind == "smtp" and mail2.kind == "smtp"
    assert mail.password is not None and mail.password.get_secret_value() == "from-file"
    assert mail2.password is not None and mail2.password.get_secret_value() == "from-env"
    assert "from-file" not in repr(c) and "from-env" not in repr(c)


def test_repr_hides_the_database_password() -> None:
    c = config.load(None, {"CAMPAIGND_DATABASE_URL": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in repr(c) and "hunter2" not in str(c)
    assert c.database.display_url == "postgresql://u:***@db/x"


def test_config_is_frozen() -> None:
    c = config.load(None, {})
    with pytest.raises(ValueError, match="frozen"):
        c.server.port = 1  # type: ignore[misc]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_exits_2_naming_the_key_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = -1\n[limits]\nmax_inline_recipients = 0\n")
    for command in (["check-config"], ["run"], ["migrate"]):
        result = run_cli(*command, "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert "server.port" in result.stderr
        assert "limits.max_inline_recipients" in result.stderr
        assert "Traceback" not in result.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(write(tmp_path, "[server]\nport = 8081\n")))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_webhook_secrets_may_be_bound_to_campaigns(tmp_path: Path) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    path = write(tmp_path, f'[auth]\nwebhook_secrets = ["{secret}", '
                           f'{{ secret = "{secret}", campaigns = ["a", "b"] }}]\n')
    first, second = config.load(path, {}).auth.webhook_secrets
    assert not isinstance(first, config.BoundWebhookSecret)
    assert isinstance(second, config.BoundWebhookSecret)
    assert second.campaigns == ("a", "b")
    assert secret not in repr(second)
    path = write(tmp_path, '[auth]\nwebhook_secrets = [{ secret = "whsec_x", campaigns = [] },'
                           f' {{ secret = "{secret}" }}]\n')
    with pytest.raises(ConfigError) as info:
        config.load(path, {})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "auth.webhook_secrets.0.secret", "auth.webhook_secrets.0.campaigns",
        "auth.webhook_secrets.1.campaigns"]


GOOD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_notifications_are_off_unless_configured_and_take_every_event_by_default(
        tmp_path: Path) -> None:
    assert config.load(None, {}).notifications is None
    path = write(tmp_path, f'[notifications]\nurl = "https://ops.example/hook"\n'
                           f'secret = "{GOOD_SECRET}"\n')
    section = config.load(path, {}).notifications
    assert section is not None and len(section.events) == 6 and section.retry_for == 86400.0
    assert GOOD_SECRET not in repr(section)
    env = {"CAMPAIGND_NOTIFICATIONS_EVENTS": "run.finished, campaign.completed"}
    section = config.load(path, env).notifications
    assert section is not None
    assert [event.value for event in section.events] == ["run.finished", "campaign.completed"]


@pytest.mark.parametrize(("text", "key", "words"), [
    ('url = "ftp://x"\nsecret = "{s}"', "notifications.url", "http"),
    ('url = "http://x"\nsecret = "sk_123"', "notifications.secret", "whsec_"),
    ('url = "http://x"\nsecret = "whsec_not base64!"', "notifications.secret", "base64"),
    ('url = "http://x"\nsecret = "{s}"\nevents = ["run.finished", "run.exploded"]',
     "notifications.events", "'run.exploded'"),
    ('url = "http://x"\nsecret = "{s}"\nevents = []', "notifications.events", "empty"),
    ('secret = "{s}"', "notifications.url", "missing"),
    ('url = "http://x"\nsecret = "{s}"\nretries = 3', "notifications.retries", "unknown key"),
])
def test_a_bad_notifications_section_names_the_key(tmp_path: Path, text: str, key: str,
                                                   words: str) -> None:
    path = write(tmp_path, "[notifications]\n" + text.format(s=GOOD_SECRET) + "\n")
    [problem] = problems_of(path)
    assert problem.startswith(key) and words in problem, problem
