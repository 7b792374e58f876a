"""One provider call of a campaign worker: admission, the call, its outcome.

Under the campaign pacer's turn (first come, first served): the pacer's slot, then the
recipient (round-robin between the campaign's runs), its message rendered, the
provider's pause (429 + Retry-After), its own rate slot and a concurrency slot, then the
pacer's window check. Last of all, with no await in between, the check that the run is
still active, before its deadline, under a valid lease and inside a send window: then the
call starts. While the campaign's send windows are closed, senders wait for the next
opening before they take a recipient (`window_gate.py`). A
recipient that does not get that far is given back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from daemon.engine import delivery
from daemon.engine.delivery import RunExecution
from daemon.engine.pacing import Pacer, ProviderGate
from daemon.engine.pool_shares import PoolGate
from daemon.engine.steering import Steering
from daemon.engine.window_gate import WindowGate
from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.clock import Clock
from daemon.providers.base import REQUEST_SENT, Message, Provider, SendResult
from daemon.store.engine import Campaign
from daemon.store.recipients import Claimed, OutcomeRow
from daemon.templates import CompiledContent, RenderError

if TYPE_CHECKING:
    from daemon.engine.recording import Recorder
    from daemon.engine.state import WorkerServices
    from daemon.planning.planner import PipelineSizes


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4x, per message
class _Call:
    """A call admitted: it starts now."""

    run: RunExecution
    recipient: Claimed
    message: Message
    provider: Provider
    gate: ProviderGate
    sent: Callable[[float], None] | None  # the pacer's: when the request went out


class ProviderCalls:
    """The calling part of a campaign worker; the other parts provide what is declared."""

    services: WorkerServices
    campaign: Campaign
    clock: Clock
    log: structlog.stdlib.BoundLogger
    pacer: Pacer | None
    window_gate: WindowGate | None  # send windows (SPEC §9.2); None: always open
    steering: Steering  # pause and resume (SPEC §9.1)
    pool_gate: PoolGate | None  # the rate pool's share on this daemon (SPEC §9.3)
    content: CompiledContent | None
    content_error: str | None
    recorder: Recorder
    sizes: PipelineSizes
    _calling: set[asyncio.Task[None]]  # senders inside a provider call
    _abandoned: int  # calls cut by a forced stop
    _metric_children: dict[tuple[str, str], Any]

    if TYPE_CHECKING:  # provided by the other parts of the worker
        def may_call(self, run: RunExecution) -> bool:
            ...

        def _give_back(self, run: RunExecution, recipient: Claimed) -> None:
            ...

        async def _take(self) -> tuple[RunExecution, Claimed] | None:
            ...

        def _record(self, outcome: OutcomeRow) -> None:
            ...

        def staff(self) -> None:
            ...

        def note_provider_error(self, provider: str, error: ProviderError, run_id: str) -> None:
            ...

        def note_dead_tokens(self, profile_id: str, tokens: tuple[str, ...]) -> None:
            ...

    async def send_one(self, task: asyncio.Task[None]) -> bool:
        """Take the next recipient and make its call; False once the worker stops.

        A paced campaign's sender picks the recipient (round-robin between its runs) only
        once it holds the pacer's turn, right before the slot: the run served is the one
        whose turn it is when the slot comes, however many senders wait, so the runs share
        the rate fairly (a run triggered later gets its share at once)."""
        await self.recorder.room(self.sizes.unwritten)
        if self.pacer is None:
            await self.steering.wait_resumed()
            if self.window_gate is not None:
                await self.window_gate.wait_open()
            item = await self._take()
            if item is None:
                return False
            if self.pool_gate is not None:  # an unthrottled campaign of a pool
                try:
                    await self.pool_gate.slot()
                except BaseException:
                    self._give_back(*item)
                    raise
            call = await self._admit(*item, paced=False)
        else:
            async with self.pacer.turn():
                await self.steering.wait_resumed()  # paused: the others wait behind this one
                if self.window_gate is not None:  # closed: the others wait behind this one
                    await self.window_gate.wait_open()
                item = await self._take()
                if item is None:
                    return False
                try:
                    await self.pacer.token()
                    if self.pool_gate is not None:  # the pool's share on this daemon too
                        await self.pool_gate.slot()
                except BaseException:
                    self._give_back(*item)
                    raise
                call = await self._admit(*item, paced=True)
        if call is not None:
            await self._call(call, task)
        return True

    def _prepare(self, run: RunExecution, recipient: Claimed, provider: Provider
                 ) -> Message | None:
        """The rendered message; None when there is nothing to send (outcome recorded)."""
        if not recipient.subscribed:
            self._record(delivery.unsubscribed(run, recipient, self.clock.now()))
            return None
        if self.content is None:  # the run is failing as a whole (the control loop closes it)
            assert self.content_error is not None
            self._record(delivery.render_failure(run, recipient,
                                                 RenderError(self.content_error),
                                                 self.clock.now()))
            return None
        try:
            return delivery.build_message(
                run, recipient, self.content, self.campaign.channel, self.services.delivery,
                self.services.unsubscribe_key,
                provider_writes_unsubscribe=provider.writes_unsubscribe_url)
        except RenderError as exc:
            self._record(delivery.render_failure(run, recipient, exc, self.clock.now()))
            return None

    async def _admit(self, run: RunExecution, recipient: Claimed, *, paced: bool
                     ) -> _Call | None:
        """Prepare the message and take the provider's gates (and, paced, the window check);
        a call to start now, holding a concurrency slot, or None (the recipient was given
        back, or its outcome recorded)."""
        if not self.may_call(run):
            self._give_back(run, recipient)
            return None
        provider = self.services.providers.for_channel(self.campaign.channel)
        message = self._prepare(run, recipient, provider)
        if message is None:
            return None
        gate = self.services.gates.gate(provider.name, provider.settings)
        holding = admitted = False
        sent: Callable[[float], None] | None = None
        try:
            await self._provider_gates(gate)
            holding = True
            if paced:
                assert self.pacer is not None
                await self.pacer.window()
            # The last check, window included: no await from here to the call.
            admitted = self.may_call(run) and (
                self.window_gate is None or self.window_gate.open_now()) and (
                self.pool_gate is None or self.pool_gate.valid()) and (
                gate.shared is None or gate.shared.valid())
            if admitted and paced:
                assert self.pacer is not None
                sent = partial(self.pacer.sent, self.pacer.record())
        finally:
            if not admitted:
                if holding:
                    gate.semaphore.release()
                self._give_back(run, recipient)
        return _Call(run, recipient, message, provider, gate, sent) if admitted else None

    async def _call(self, call: _Call, task: asyncio.Task[None]) -> None:
        run, provider, gate = call.run, call.provider, call.gate
        self._calling.add(task)
        self.staff()  # more work queued: another sender takes it while this one calls
        run.call_started()
        try:
            began = self.clock.monotonic()
            result: SendResult | None = None
            error: ProviderError | None = None
            REQUEST_SENT.set(call.sent)  # the sender's own context: one call at a time
            try:
                result = await provider.send(call.message)
            except ProviderError as exc:
                error = exc
            except asyncio.CancelledError:
                self._abandoned += 1  # stays claimed: sent again after a restart
                raise
            except Exception as exc:  # a provider bug must not lose the recipient: retry it
                self.log.exception("provider.error", provider=provider.name, run_id=run.id)
                error = TransientError(f"provider_failure: {type(exc).__name__}")
            finally:
                gate.semaphore.release()
                self._calling.discard(task)
            self._metric("latency", provider.name).observe(self.clock.monotonic() - began)
            run.calls += 1
            self._outcome(run, call.recipient, provider.name, gate, result, error)
        finally:
            run.call_ended()

    async def _provider_gates(self, gate: ProviderGate) -> None:
        """Wait out a pause, take the provider's rate slot and a concurrency slot."""
        while True:
            await gate.wait_unpaused()
            if gate.shared is not None:  # the provider's rate, over every daemon
                await gate.shared.slot()
            elif gate.pacer is not None:
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
            if result.invalid_push_tokens:  # FCM's dead tokens, reported with a success
                self.note_dead_tokens(recipient.profile_id, result.invalid_push_tokens)
            self._record(delivery.sent(run, recipient, result, now, provider))
            return
        transient = isinstance(error, TransientError)
        self._metric("transient" if transient else "permanent", provider).inc()
        if isinstance(error, PermanentError) and error.invalid_push_tokens:
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

