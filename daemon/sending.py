"""One provider call of a campaign worker: admission, the call, its outcome.

Admission takes, in this order and under the campaign pacer's turn (first come, first
served): the pacer's slot, the provider's pause (429 + Retry-After), its own rate slot
and a concurrency slot, then the pacer's window check. Last of all, with no await in
between, the check that the run is still active, before its deadline and under a valid
lease: then the call starts. A recipient that does not get that far is given back.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from daemon import delivery
from daemon.clock import Clock
from daemon.delivery import RunExecution
from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.providers.base import SendResult
from daemon.ratelimit import Pacer, ProviderGate
from daemon.store.engine import Campaign
from daemon.store.recipients import Claimed, OutcomeRow
from daemon.templates import CompiledContent, RenderError

if TYPE_CHECKING:
    from daemon.fanout import WorkerServices


class ProviderCalls:
    """The calling part of a campaign worker; the other parts provide what is declared."""

    services: WorkerServices
    campaign: Campaign
    clock: Clock
    log: structlog.stdlib.BoundLogger
    pacer: Pacer | None
    content: CompiledContent | None
    content_error: str | None
    _calling: set[asyncio.Task[None]]  # senders inside a provider call
    _abandoned: int  # calls cut by a forced stop
    _metric_children: dict[tuple[str, str], Any]

    if TYPE_CHECKING:  # provided by the other parts of the worker
        def may_call(self, run: RunExecution) -> bool:
            ...

        def _give_back(self, run: RunExecution, recipient: Claimed) -> None:
            ...

        def _record(self, outcome: OutcomeRow) -> None:
            ...

        def note_provider_error(self, provider: str, error: ProviderError, run_id: str) -> None:
            ...

        def note_dead_tokens(self, profile_id: str, tokens: tuple[str, ...]) -> None:
            ...

    async def _deliver(self, run: RunExecution, recipient: Claimed,
                       task: asyncio.Task[None]) -> None:
        now = self.clock.now()
        if not recipient.subscribed:
            self._record(delivery.unsubscribed(run, recipient, now))
            return
        if self.content is None:  # the run is failing as a whole (the control loop closes it)
            assert self.content_error is not None
            self._record(delivery.render_failure(run, recipient,
                                                 RenderError(self.content_error), now))
            return
        try:
            message = delivery.build_message(
                run, recipient, self.content, self.campaign.channel, self.services.delivery,
                self.services.unsubscribe_key)
        except RenderError as exc:
            self._record(delivery.render_failure(run, recipient, exc, now))
            return
        provider = self.services.providers.for_channel(self.campaign.channel)
        gate = self.services.gates.gate(provider.name, provider.settings)
        if not await self._admit(run, gate, recipient):
            return
        self._calling.add(task)
        run.call_started()
        try:
            began = self.clock.monotonic()
            result: SendResult | None = None
            error: ProviderError | None = None
            try:
                result = await provider.send(message)
            except ProviderError as exc:
                error = exc
            except asyncio.CancelledError:
                self._abandoned += 1  # stays marked in flight: sent again after a restart
                raise
            except Exception as exc:  # a provider bug must not lose the recipient: retry it
                self.log.exception("provider.error", provider=provider.name, run_id=run.id)
                error = TransientError(f"provider_failure: {type(exc).__name__}")
            finally:
                gate.semaphore.release()
                self._calling.discard(task)
            self._metric("latency", provider.name).observe(self.clock.monotonic() - began)
            run.calls += 1
            self._outcome(run, recipient, provider.name, gate, result, error)
        finally:
            run.call_ended()

    async def _admit(self, run: RunExecution, gate: ProviderGate, recipient: Claimed) -> bool:
        """Take the campaign pacer's slot and the provider's gates. True: the call starts now,
        holding a provider concurrency slot. False: the recipient was given back."""
        admitted = False
        try:
            if not self.may_call(run):
                return False
            if self.pacer is None:
                await self._provider_gates(gate)
                admitted = self._last_check(run, gate)
                return admitted
            async with self.pacer.turn():
                if not self.may_call(run):  # closed while queued: make way at once
                    return False
                await self.pacer.token()
                await self._provider_gates(gate)
                try:
                    await self.pacer.window()
                except BaseException:
                    gate.semaphore.release()
                    raise
                admitted = self._last_check(run, gate)
                if admitted:
                    self.pacer.record()
                return admitted
        finally:
            if not admitted:
                self._give_back(run, recipient)

    def _last_check(self, run: RunExecution, gate: ProviderGate) -> bool:
        if self.may_call(run):
            return True
        gate.semaphore.release()
        return False

    async def _provider_gates(self, gate: ProviderGate) -> None:
        """Wait out a pause, take the provider's rate slot and a concurrency slot."""
        while True:
            await gate.wait_unpaused()
            if gate.pacer is not None:
                await gate.pacer.acquire()
            await gate.semaphore.acquire()
            if gate.paused_for() <= 0:
                return
            gate.semaphore.release()

    def _outcome(self, run: RunExecution, recipient: Claimed, provider: str,
                 gate: ProviderGate, result: SendResult | None,
                 error: ProviderError | None) -> None:
        now = self.clock.now()
        if error is None:
            assert result is not None
            self._metric("sent", provider).inc()
            self.note_dead_tokens(recipient.profile_id, result.invalid_push_tokens)
            self._record(delivery.sent(run, recipient, result, now))
            return
        transient = isinstance(error, TransientError)
        self._metric("transient" if transient else "permanent", provider).inc()
        if isinstance(error, PermanentError):
            self.note_dead_tokens(recipient.profile_id, error.invalid_push_tokens)
        if isinstance(error, TransientError) and error.retry_after and \
                gate.pause(error.retry_after):
            self.log.warning("provider.throttled", provider=provider,
                             retry_after=error.retry_after, run_id=run.id)
        self.note_provider_error(provider, error, run.id)
        self._record(delivery.after_error(run, recipient, error, now, self.services.delivery))

    def _metric(self, kind: str, provider: str) -> Any:
        """A provider metric's child for these labels (looked up once: `labels()` costs more
        than the increment, per message)."""
        child = self._metric_children.get((kind, provider))
        if child is None:
            metrics = self.services.metrics
            child = (metrics.provider_latency.labels(provider) if kind == "latency"
                     else metrics.provider_calls.labels(provider, kind))
            self._metric_children[(kind, provider)] = child
        return child

