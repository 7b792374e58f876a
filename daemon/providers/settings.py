"""The `[providers.NAME]` config sections, one model per `kind`.

Secrets may be given in clear (`password`), by environment variable
(`password_env`) or by file (`password_file`). `config.py` passes the process
environment as validation context, so that only it reads `os.environ`; secrets
are resolved here, once, at load, and held as `SecretStr` (redacted in reprs).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.infra.durations import Duration
from daemon.models import Channel


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_secret(data: Any, info: ValidationInfo, key: str) -> Any:
    """Fill `key` from `key_env` or `key_file` (at most one of the three may be set)."""
    if not isinstance(data, dict):
        return data
    env_key, file_key = f"{key}_env", f"{key}_file"
    given = [k for k in (key, env_key, file_key) if data.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f"set only one of {key}, {env_key}, {file_key} (got {', '.join(given)})")
    data = dict(data)
    if data.get(env_key) is not None:
        environ: dict[str, str] = (info.context or {}).get("environ", {})
        name = str(data[env_key])
        if name not in environ:
            raise ValueError(f"{env_key}: environment variable {name} is not set")
        data[key] = environ[name]
    elif data.get(file_key) is not None:
        path = Path(str(data[file_key]))
        try:
            data[key] = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror}") from None
    return data


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    return value


# A URL the daemon POSTs to (a webhook provider, the notifications receiver).
HttpUrlText = Annotated[str, AfterValidator(_http_url)]


def check_webhook_secret(value: str) -> str:
    """A Standard Webhooks secret: `whsec_` followed by base64 of the key bytes."""
    if not value.startswith("whsec_"):
        raise ValueError("a webhook secret starts with 'whsec_' (Standard Webhooks)")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes of key")
    return value


class _ProviderBase(_Section):
    timeout: Duration = 10.0
    concurrency: int = Field(default=64, ge=1, le=10_000)
    rate_per_second: float | None = Field(default=None, gt=0, le=100_000)

    @property
    def channels(self) -> frozenset[Channel]:
        """The channels this provider can deliver."""
        return frozenset(Channel)


class LogProviderSettings(_ProviderBase):
    kind: Literal["log"] = "log"


class WebhookProviderSettings(_ProviderBase):
    kind: Literal["webhook"]
    url: HttpUrlText
    secret: SecretStr | None = None
    # Header values often carry credentials (Authorization: Bearer ...): redacted in reprs.
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_webhook_secret(value.get_secret_value())
        return value


class SmtpProviderSettings(_ProviderBase):
    kind: Literal["smtp"]
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None
    pool_size: int = Field(default=8, ge=1, le=1000)
    # Extra CA certificates (PEM) to trust for TLS/STARTTLS, e.g. a private relay's own CA.
    tls_ca_file: Path | None = None
    # Standard Webhooks secret of the email service posting delivery receipts (bounces) to
    # /v1/receipts/webhook/NAME; None: that endpoint refuses them.
    receipt_secret: SecretStr | None = None

    @field_validator("receipt_secret")
    @classmethod
    def _receipt_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_webhook_secret(value.get_secret_value())
        return value

    @model_validator(mode="before")
    @classmethod
    def _secret(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret(data, info, "password")

    @model_validator(mode="after")
    def _credentials(self) -> SmtpProviderSettings:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"none": 25, "starttls": 587, "tls": 465}[self.tls]

    @property
    def channels(self) -> frozenset[Channel]:
        return frozenset({Channel.EMAIL})


class TwilioProviderSettings(_ProviderBase):
    kind: Literal["twilio"]
    account_sid: str
    auth_token: SecretStr
    auth_token_env: str | None = None
    auth_token_file: Path | None = None
    from_: str | None = Field(default=None, alias="from")
    messaging_service_sid: str | None = None
    base_url: str = "https://api.twilio.com"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _secret(cls, data: Any, info: ValidationInfo) -> Any:
        return resolve_secret(data, info, "auth_token")

    @model_validator(mode="after")
    def _sender(self) -> TwilioProviderSettings:
        if (self.from_ is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from, messaging_service_sid")
        return self

    @property
    def channels(self) -> frozenset[Channel]:
        return frozenset({Channel.SMS})


class FcmProviderSettings(_ProviderBase):
    kind: Literal["fcm"]
    service_account_file: Path
    base_url: str = "https://fcm.googleapis.com"

    @property
    def channels(self) -> frozenset[Channel]:
        return frozenset({Channel.PUSH})


ProviderSettings = Annotated[
    LogProviderSettings
    | WebhookProviderSettings
    | SmtpProviderSettings
    | TwilioProviderSettings
    | FcmProviderSettings,
    Field(discriminator="kind"),
]
