"""What every handler can reach: config, pool, clock, metrics, lifecycle (one AppKey)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.infra.clock import Clock
from daemon.infra.config import Config
from daemon.infra.metrics import Metrics
from daemon.models import TokenScope
from daemon.store import Pool

TOKEN_CACHE_SECONDS = 5.0


@dataclass
class Lifecycle:
    """The daemon's state as the API sees it."""

    stopping: bool = False
    migrations_current: bool = True
    # A stage that died (its name): the daemon stops and exits 1, so that systemd's
    # Restart=on-failure starts it again (exit 0 would leave it stopped).
    failed: str | None = None


class TokenCache:
    """token hash -> (scope or None, expiry on the monotonic clock)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[TokenScope | None, float]] = {}

    def get(self, key: str, now: float) -> tuple[bool, TokenScope | None]:
        entry = self._entries.get(key)
        if entry is None or entry[1] < now:
            return False, None
        return True, entry[0]

    def put(self, key: str, scope: TokenScope | None, now: float) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()  # bounded: a flood of bad tokens must not grow memory
        self._entries[key] = (scope, now + TOKEN_CACHE_SECONDS)


@dataclass
class AppContext:
    config: Config
    pool: Pool
    clock: Clock
    metrics: Metrics
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    token_cache: TokenCache = field(default_factory=TokenCache)
    # Services later stages attach (engine, providers, ...), by name.
    services: dict[str, Any] = field(default_factory=dict)


CONTEXT = web.AppKey("campaignd.context", AppContext)


def context(request: web.Request) -> AppContext:
    return request.app[CONTEXT]
