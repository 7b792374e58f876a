"""A pooled campaign's demand on this daemon's rate pools (SPEC §9.3): published while a
run of it sends, dropped when its worker ends. The pools are the campaign's `rate_pool`
(its gate, `pool_shares.PoolGate`) and its provider's rate when that is shared between
daemons."""

from __future__ import annotations

from daemon.engine.delivery import RunState
from daemon.engine.pool_shares import PoolGate
from daemon.engine.state import WorkerState

MAX_POOL_DEMAND = 2000  # an unthrottled pooled campaign asks for this (limits' highest rate)
ASK_WITHIN = 1.0  # a starting run waits this long at most for its first share


class PoolDemand:
    """What the campaign asks of its pools (changes nothing of the worker's state)."""

    def __init__(self, state: WorkerState, pool_gate: PoolGate | None) -> None:
        self.state = state
        self.pool_gate = pool_gate
        self._asking = False  # a run is about to start: its demand stands meanwhile

    def publish(self) -> None:
        """A pooled campaign's demand on this daemon (SPEC §9.3): its own rate (or the
        pool's: the most a daemon may ask) while it has a run sending, else 0."""
        state = self.state
        shares = state.services.pool_shares
        if shares is None:
            return
        pool = state.campaign.rate_pool
        provider = self.provider_pool()
        if pool is None and provider is None:
            return
        sending = self._asking or (not state.steering.paused and any(
            run.state is RunState.ACTIVE for run in state.runs.values()))
        rate = float(state.campaign.rate_per_second or MAX_POOL_DEMAND)
        if pool is not None:
            shares.set_demand(pool, state.campaign.id, rate if sending else 0.0)
        if provider is not None:  # the provider's own rate, a pool across daemons
            name, limit = provider
            shares.set_demand(name, state.campaign.id, min(rate, limit) if sending else 0.0)

    async def ask_share(self) -> None:
        """Before a run of a pooled campaign starts: when this daemon holds no share for it
        yet, ask for one (up to `ASK_WITHIN` s), so that the run is planned at its share
        from its start statement, not at its own rate then re-planned (SPEC §9.3)."""
        state = self.state
        shares, pool = state.services.pool_shares, state.campaign.rate_pool
        if shares is None or pool is None or state.campaign.rate_per_second is None:
            return
        if shares.share_of(pool, state.campaign.id) is None:
            self._asking = True  # (a publish meanwhile, no run active yet, must not drop it)
            try:
                await shares.ask(pool, state.campaign.id,
                                 float(state.campaign.rate_per_second), ASK_WITHIN)
            finally:
                self._asking = False

    def provider_pool(self) -> tuple[str, float] | None:
        """The provider's rate pool this campaign's calls go through, and its rate."""
        services = self.state.services
        provider = services.providers.for_channel(self.state.campaign.channel)
        gate = services.gates.gate(provider.name, provider.settings)
        if gate.shared is None or gate.rate is None:
            return None
        return gate.shared.name, gate.rate

    def drop(self) -> None:
        """The worker ends: this campaign's demand on its pools goes."""
        shares = self.state.services.pool_shares
        if shares is None:
            return
        campaign_id = self.state.campaign.id
        if self.pool_gate is not None:
            shares.drop(self.pool_gate.name, campaign_id)
        if (provider := self.provider_pool()) is not None:
            shares.drop(provider[0], campaign_id)
