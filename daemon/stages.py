"""The stages `campaignd run` starts, in order (the service stops them in reverse)."""

from __future__ import annotations

from daemon.engine import stage as engine
from daemon.infra import loop_lag
from daemon.notifications import deliverer as notifications
from daemon.providers import registry
from daemon.receipts import writer as receipts
from daemon.service import StageFactory


def default_stages() -> list[StageFactory]:
    """The loop's lag watch (first: it sees the others start and stop), providers, then
    the engine that uses them, then the receipt writer, then the notification deliverer:
    the deliverer stops first (the events of the engine's last writes stay in the outbox,
    for the next start or another daemon), then the writer (once the HTTP server has
    answered the requests in flight), then the engine."""
    return [loop_lag.stage, registry.stage, engine.stage, receipts.stage, notifications.stage]
