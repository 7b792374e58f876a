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
from typing import Any

from daemon.engine import delivery
from daemon.engine.closing import RunClosing
from daemon.engine.delivery import RunExecution, RunState
from daemon.engine.pacing import Pacer, ProviderGate
from daemon.engine.pool_shares import PoolGate
from daemon.engine.recording import Recorder
from daemon.engine.senders import Senders
from daemon.engine.state import WorkerState
from daemon.engine.window_gate import WindowGate
from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.providers.base import REQUEST_SENT, Message, Provider, SendResult
from daemon.store.recipients import Claimed
from daemon.templates import RenderError

Sent = Callable[[float], None]  # a limit's report: the call was still out then (sent, answered)


def _each(campaign: Sent | None, pool: Sent | None, provider: Sent | None) -> Sent | None:
    """One report for the limits a call went through (most calls: the campaign's alone,
    returned as it is, with no list made per call)."""
    if pool is None and provider is None:
        return campaign
    given = [report for report in (campaign, pool, provider) if report is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def every(at: float) -> None:
        for report in given:
            report(at)

    return every


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4x, per message
class _Call:
    """A call admitted: it starts now."""

    run: RunExecution
    recipient: Claimed
    message: Message
    provider: Provider
    gate: ProviderGate
    sent: Sent | None  # the limits' report: when the request went out


class ProviderCalls:
    """The provider calls (changes `calling`, `dead_tokens`, `abandoned`; sets `stopping`
    when it finds the lease lost)."""

    def __init__(self, state: WorkerState, recorder: Recorder, senders: Senders,
                 closing: RunClosing, pacer: Pacer | None, window_gate: WindowGate | None,
                 pool_gate: PoolGate | None) -> None:
        self.state = state
        self.services = state.services
        self.clock = state.clock
        self.log = state.log
        self.steering = state.steering  # pause and resume (SPEC §9.1)
        self.content = state.content
        self.content_error = state.content_error
        self.recorder = recorder
        self.closing = closing
        self.pacer = pacer  # the engine's, per campaign: it outlives a worker
        self.window_gate = window_gate  # send windows (SPEC §9.2); None: always open
        self.pool_gate = pool_gate  # the rate pool's share on this daemon (SPEC §9.3)
        self._take = senders.take
        self._give_back = senders.give_back
        self.staff = senders.staff
        self._record = recorder.add
        self._metric_children: dict[tuple[str, str], Any] = {}
        self._error_log: dict[str, tuple[float, int]] = {}

    def may_call(self, run: RunExecution) -> bool:
        """Whether a provider call for `run` may start now (checked just before it)."""
        state = self.state
        if state.stopping or self.steering.paused or run.state is not RunState.ACTIVE:
            return False
        if not state.lease.valid():
            state.stopping = True  # no call may start any more: the worker ends
            state.wake_control()
            return False
        deadline = run.row.deadline
        if deadline is not None and self.clock.now() >= deadline:
            self.closing.begin_close(run, exclude_as=run.row.deadline_reason)
            return False
        return True

    def note_provider_error(self, provider: str, error: ProviderError, run_id: str) -> None:
        """`provider.error`, at most once a second per provider (with how many were folded)."""
        now = self.clock.monotonic()
        last, folded = self._error_log.get(provider, (float("-inf"), 0))
        if now - last < 1.0:
            self._error_log[provider] = (last, folded + 1)
            return
        self._error_log[provider] = (now, 0)
        self.log.warning("provider.error", provider=provider, run_id=run_id, reason=error.reason,
                         transient=isinstance(error, TransientError), folded=folded)

    def note_dead_tokens(self, profile_id: str, tokens: tuple[str, ...]) -> None:
        self.state.dead_tokens.extend((profile_id, token) for token in tokens)

    async def send_one(self, task: asyncio.Task[None]) -> bool:
        """Take the next recipient and make its call; False once the worker stops.

        A paced campaign's sender picks the recipient (round-robin between its runs) only
        once it holds the pacer's turn, right before the slot: the run served is the one
        whose turn it is when the slot comes, however many senders wait, so the runs share
        the rate fairly (a run triggered later gets its share at once)."""
        await self.recorder.room(self.state.sizes.unwritten)
        if self.pacer is None:
            await self.steering.wait_resumed()
            if self.window_gate is not None:
                await self.window_gate.wait_open()
            item = await self._take()
            if item is None:
                return False
            pool_sent = None
            if self.pool_gate is not None:  # an unthrottled campaign of a pool
                try:
                    pool_sent = await self.pool_gate.slot()
                except BaseException:
                    self._give_back(*item)
                    raise
            call = await self._admit(*item, paced=False, pool_sent=pool_sent)
        else:
            async with self.pacer.turn():
                await self.steering.wait_resumed()  # paused: the others wait behind this one
                if self.window_gate is not None:  # closed: the others wait behind this one
                    await self.window_gate.wait_open()
                item = await self._take()
                if item is None:
                    return False
                pool_sent = None
                try:
                    await self.pacer.token()
                    if self.pool_gate is not None:  # the pool's share on this daemon too
                        pool_sent = await self.pool_gate.slot()
                except BaseException:
                    self._give_back(*item)
                    raise
                call = await self._admit(*item, paced=True, pool_sent=pool_sent)
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
                run, recipient, self.content, self.state.campaign.channel, self.services.delivery,
                self.services.unsubscribe_key,
                provider_writes_unsubscribe=provider.writes_unsubscribe_url)
        except RenderError as exc:
            self._record(delivery.render_failure(run, recipient, exc, self.clock.now()))
            return None

    async def _admit(self, run: RunExecution, recipient: Claimed, *, paced: bool,
                     pool_sent: Sent | None = None) -> _Call | None:
        """Prepare the message and take the provider's gates (and, paced, the window check);
        a call to start now, holding a concurrency slot, or None (the recipient was given
        back, or its outcome recorded). Each limit the call went through (the campaign's
        pacer, the pool's share, the provider's rate) is told when its request went out."""
        if not self.may_call(run):
            self._give_back(run, recipient)
            return None
        provider = self.services.providers.for_channel(self.state.campaign.channel)
        message = self._prepare(run, recipient, provider)
        if message is None:
            return None
        gate = self.services.gates.gate(provider.name, provider.settings)
        holding = admitted = False
        sent: Sent | None = None
        try:
            provider_sent = await self._provider_gates(gate)
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
            if admitted:
                sent = _each(sent, pool_sent, provider_sent)
        finally:
            if not admitted:
                if holding:
                    gate.semaphore.release()
                self._give_back(run, recipient)
        return _Call(run, recipient, message, provider, gate, sent) if admitted else None

    async def _call(self, call: _Call, task: asyncio.Task[None]) -> None:
        run, provider, gate = call.run, call.provider, call.gate
        self.state.calling.add(task)
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
                self.state.abandoned += 1  # stays claimed: sent again after a restart
                raise
            except Exception as exc:  # a provider bug must not lose the recipient: retry it
                self.log.exception("provider.error", provider=provider.name, run_id=run.id)
                error = TransientError(f"provider_failure: {type(exc).__name__}")
            finally:
                gate.semaphore.release()
                self.state.calling.discard(task)
                if call.sent is not None:  # the limits count the call until its answer
                    call.sent(asyncio.get_running_loop().time())
            self._metric("latency", provider.name).observe(self.clock.monotonic() - began)
            run.calls += 1
            self._outcome(run, call.recipient, provider.name, gate, result, error)
        finally:
            run.call_ended()

    async def _provider_gates(self, gate: ProviderGate) -> Sent | None:
        """Wait out a pause, take the provider's rate slot and a concurrency slot; what to
        tell the provider's rate when the request went out."""
        while True:
            sent: Sent | None = None
            await gate.wait_unpaused()
            if gate.shared is not None:  # the provider's rate, over every daemon
                sent = await gate.shared.slot()
            elif gate.pacer is not None:
                sent = partial(gate.pacer.sent, await gate.pacer.acquire())
            await gate.semaphore.acquire()
            if gate.paused_for() <= 0:
                return sent
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

