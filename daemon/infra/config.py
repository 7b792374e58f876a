"""Configuration: a TOML file plus CAMPAIGND_* environment overrides.

Read once into a frozen, validated object whose repr hides secrets. Every bad
key is reported (all of them, not the first), named by its dotted path, and
`load` raises `ConfigError`; the CLI turns that into exit code 2. This is the
only module that reads `os.environ`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.errors import ConfigError
from daemon.infra.durations import Duration

__all__ = ["Config", "ConfigError", "load", "redact_url", "systemd_environ"]
from daemon.models import Channel, NotificationEvent
from daemon.providers.settings import (
    HttpUrlText,
    LogProviderSettings,
    ProviderSettings,
    check_webhook_secret,
    resolve_secret,
)

ENV_PREFIX = "CAMPAIGND_"
TWELVE_HOURS = 12 * 3600.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1 << 30)
    max_trigger_bytes: int = Field(default=16_777_216, ge=1024, le=1 << 31)
    shutdown_grace: Duration = 30.0
    # /metrics names campaigns: it needs an admin token unless this says otherwise.
    public_metrics: bool = False

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str:
        """Where links in messages point: `public_url`, or the listening address."""
        return self.public_url or f"http://{self.host}:{self.port}"


class DatabaseSection(_Section):
    url: SecretStr | None = None
    pool_size: int = Field(default=10, ge=2, le=200)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("url must start with postgresql:// or postgres://")
        return value

    @property
    def display_url(self) -> str | None:
        """The URL with its password masked, safe for logs."""
        if self.url is None:
            return None
        return redact_url(self.url.get_secret_value())


class BoundWebhookSecret(_Section):
    """A trigger-signing secret that may trigger only the campaigns named."""

    secret: SecretStr
    campaigns: tuple[str, ...] = Field(min_length=1)

    @field_validator("secret")
    @classmethod
    def _format(cls, value: SecretStr) -> SecretStr:
        check_webhook_secret(value.get_secret_value())
        return value


def _secret_form(value: Any) -> str:
    return "bound" if isinstance(value, dict | BoundWebhookSecret) else "any"


# A plain `whsec_` string may trigger any campaign; a table
# `{ secret = "whsec_...", campaigns = ["a", "b"] }` only those campaigns.
WebhookSecret = Annotated[
    Annotated[SecretStr, Tag("any")] | Annotated[BoundWebhookSecret, Tag("bound")],
    Discriminator(_secret_form),
]


class AuthSection(_Section):
    webhook_secrets: tuple[WebhookSecret, ...] = ()

    @field_validator("webhook_secrets")
    @classmethod
    def _format(
        cls, value: tuple[SecretStr | BoundWebhookSecret, ...]
    ) -> tuple[SecretStr | BoundWebhookSecret, ...]:
        for secret in value:
            if isinstance(secret, SecretStr):
                check_webhook_secret(secret.get_secret_value())
        return value


class LimitsSection(_Section):
    time_cap: Duration = Field(default=TWELVE_HOURS, gt=0, le=TWELVE_HOURS)
    max_rate_per_second: int = Field(default=2000, ge=1, le=2000)
    max_inline_recipients: int = Field(default=10_000, ge=1, le=1_000_000)


class EngineSection(_Section):
    lease_ttl: Duration = Field(default=15.0, ge=1.0, le=3600.0)
    checkpoint_interval: Duration = Field(default=1.0, gt=0, le=60.0)
    # "auto": uvloop when installed (a dependency on Linux and macOS), else asyncio's loop.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class DeliverySection(_Section):
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_base: Duration = Field(default=1.0, gt=0, le=3600.0)
    backoff_max: Duration = Field(default=300.0, gt=0, le=86400.0)


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class NotificationsSection(_Section):
    """`[notifications]`: where lifecycle events are POSTed, signed (docs/notifications.md)."""

    url: HttpUrlText
    secret: SecretStr
    secret_env: str | None = None
    secret_file: Path | None = None
    events: tuple[NotificationEvent, ...] = tuple(NotificationEvent)
    timeout: Duration = Field(default=10.0, gt=0, le=300.0)
    retry_first: Duration = Field(default=5.0, gt=0, le=3600.0)
    retry_max: Duration = Field(default=3600.0, gt=0, le=86400.0)
    retry_for: Duration = Field(default=86400.0, gt=0, le=86400.0)
    keep_delivered: Duration = Field(default=7 * 86400.0, ge=60.0, le=366 * 86400.0)
    keep_failed: Duration = Field(default=30 * 86400.0, ge=60.0, le=366 * 86400.0)

    @model_validator(mode="before")
    @classmethod
    def _secret(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret(data, info, "secret")

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, value: SecretStr) -> SecretStr:
        check_webhook_secret(value.get_secret_value())
        return value

    @field_validator("events", mode="before")
    @classmethod
    def _known_events(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        known = {event.value for event in NotificationEvent}
        unknown = [str(name) for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown event {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        if not value:
            raise ValueError("events is empty: list at least one, or remove the section")
        return value


class ChannelsSection(_Section):
    email: str = "log"
    sms: str = "log"
    push: str = "log"

    def provider_for(self, channel: Channel) -> str:
        return str(getattr(self, channel.value))


class Config(_Section):
    """The whole configuration, frozen."""

    state_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("campaignd")))
    server: ServerSection = ServerSection()
    database: DatabaseSection = DatabaseSection()
    auth: AuthSection = AuthSection()
    limits: LimitsSection = LimitsSection()
    engine: EngineSection = EngineSection()
    delivery: DeliverySection = DeliverySection()
    log: LogSection = LogSection()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    channels: ChannelsSection = ChannelsSection()
    notifications: NotificationsSection | None = None
    source: Path | None = Field(default=None, exclude=True)

    def provider_settings(self) -> dict[str, ProviderSettings]:
        """Every configured provider, plus the implicit `log` one."""
        providers: dict[str, ProviderSettings] = {"log": LogProviderSettings()}
        providers.update(self.providers)
        return providers


SECTIONS: dict[str, type[_Section]] = {
    "server": ServerSection,
    "database": DatabaseSection,
    "auth": AuthSection,
    "limits": LimitsSection,
    "engine": EngineSection,
    "delivery": DeliverySection,
    "log": LogSection,
    "channels": ChannelsSection,
    "notifications": NotificationsSection,
}
_LIST_KEYS = {("auth", "webhook_secrets"), ("notifications", "events")}


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def _env_overrides(
    environ: Mapping[str, str], problems: list[str], from_env: dict[str, str]
) -> dict[str, Any]:
    """The CAMPAIGND_<SECTION>_<KEY> variables as a nested dict (values left as strings)."""
    data: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name.removeprefix(ENV_PREFIX).lower()
        if rest == "state_dir":
            data["state_dir"] = value
            from_env["state_dir"] = name
            continue
        section, _, key = rest.partition("_")
        model = SECTIONS.get(section)
        if model is None or key not in model.model_fields:
            problems.append(f"{name}: unknown setting (expected CAMPAIGND_<SECTION>_<KEY>)")
            continue
        parsed: Any = value
        if (section, key) in _LIST_KEYS:
            parsed = [item.strip() for item in value.split(",") if item.strip()]
        data.setdefault(section, {})[key] = parsed
        from_env[f"{section}.{key}"] = name
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Mapping[str, Any], from_env: Mapping[str, str]) -> str:
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    # Discriminated unions put the tag in the path: providers.hook.webhook.url -> providers.hook.url
    parts = loc.split(".")
    if len(parts) >= 3 and parts[0] == "providers" and parts[2] in (
        "log",
        "webhook",
        "smtp",
        "twilio",
        "fcm",
    ):
        loc = ".".join(parts[:2] + parts[3:])
    if parts[:2] == ["auth", "webhook_secrets"] and len(parts) > 3 and parts[3] in ("any",
                                                                                "bound"):
        loc = ".".join(parts[:3] + parts[4:])  # the union's tag, likewise
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    env_name = from_env.get(loc)
    where = f"{loc} (from {env_name})" if env_name else loc or "(top level)"
    return f"{where}: {message}"


def _check_channels(config: Config, problems: list[str]) -> None:
    providers = config.provider_settings()
    for channel in Channel:
        name = config.channels.provider_for(channel)
        settings = providers.get(name)
        if settings is None:
            problems.append(f"channels.{channel.value}: no provider named {name!r}")
        elif channel not in settings.channels:
            problems.append(
                f"channels.{channel.value}: provider {name!r} ({settings.kind}) "
                f"cannot deliver {channel.value}"
            )


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if any) and the environment; raise ConfigError on any bad key."""
    environ = dict(os.environ if environ is None else environ)
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"config file {path}: cannot read it: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"config file {path}: not UTF-8 text"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {path}: invalid TOML: {exc}"]) from None
    from_env: dict[str, str] = {}
    data = _merge(data, _env_overrides(environ, problems, from_env))
    if path is not None:
        data["source"] = str(path)
    try:
        config = Config.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        problems.extend(_describe(error, from_env) for error in exc.errors())
        raise ConfigError(problems) from None
    _check_channels(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def systemd_environ(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """NOTIFY_SOCKET and WATCHDOG_USEC as systemd set them (None when not under systemd)."""
    environ = os.environ if environ is None else environ
    return environ.get("NOTIFY_SOCKET"), environ.get("WATCHDOG_USEC")
