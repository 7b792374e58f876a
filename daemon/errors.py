"""One root exception, typed by what the caller does next."""

from __future__ import annotations

from dataclasses import dataclass, field


class CampaigndError(Exception):
    """campaignd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(CampaigndError):
    """The configuration is invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class DatabaseError(CampaigndError):
    """The database could not be reached or used."""


class MigrationError(CampaigndError):
    """The migrations could not be applied."""


class ProviderError(CampaigndError):
    """A provider refused or failed a message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class TransientError(ProviderError):
    """A provider failed in a way worth retrying (timeouts, 5xx, 429, SMTP 4xx)."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(reason)


class PermanentError(ProviderError):
    """A provider refused a message for good (other 4xx, SMTP 5xx, bad address)."""

    def __init__(self, reason: str, *, invalid_push_tokens: tuple[str, ...] = ()) -> None:
        self.invalid_push_tokens = invalid_push_tokens
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad field of a request: where it is and what is wrong with it."""

    loc: str
    msg: str


@dataclass
class Problem(CampaigndError):
    """An API error, rendered as application/problem+json (RFC 9457)."""

    status: int
    code: str
    title: str
    detail: str | None = None
    errors: list[FieldError] = field(default_factory=list)

    def __post_init__(self) -> None:
        CampaigndError.__init__(self, f"{self.status} {self.code}: {self.detail or self.title}")
