"""What a campaign worker's parts share: the services every worker gets from the engine,
and the lease it holds. The parts (`runs`, `starting`, `closing`, `sending`) import these
from here, never from `worker.py`, so the engine's imports point one way (worker → parts →
state)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from daemon.engine.delivery import DeliverySettings
from daemon.engine.pacing import ProviderGates
from daemon.engine.pool_shares import PoolShares
from daemon.infra.clock import Clock
from daemon.infra.metrics import Metrics
from daemon.models import Channel
from daemon.providers.base import Provider
from daemon.store import Pool
from daemon.store.engine import Campaign
from daemon.templates import CompiledContent, TemplateProblem


class Lease(Protocol):
    """The campaign's lease as the worker sees it: valid, or lost."""

    def valid(self) -> bool: ...


class ProviderSource(Protocol):
    """Where the worker finds the provider of a channel (the registry)."""

    def for_channel(self, channel: Channel) -> Provider: ...


@dataclass
class WorkerServices:
    """What every campaign worker shares (built by the engine)."""

    pool: Pool
    clock: Clock
    metrics: Metrics
    providers: ProviderSource
    gates: ProviderGates
    holder: str
    delivery: DeliverySettings
    unsubscribe_key: bytes | None
    checkpoint_interval: float
    time_cap: float
    pool_shares: PoolShares | None = None  # this daemon's side of the rate pools
    # Compiled templates by (channel, content): campaigns sharing a content compile it once.
    compiled: dict[tuple[str, str], CompiledContent | str] = field(default_factory=dict)

    def compile(self, campaign: Campaign) -> CompiledContent | str:
        """The campaign's content compiled (or why it does not compile)."""
        key = (campaign.channel.value, json.dumps(campaign.content, sort_keys=True))
        known = self.compiled.get(key)
        if known is None:
            try:
                known = CompiledContent.compile(campaign.channel, campaign.content)
            except TemplateProblem as exc:
                known = str(exc)
            if len(self.compiled) >= 1024:
                self.compiled.clear()
            self.compiled[key] = known
        return known
