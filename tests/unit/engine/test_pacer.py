"""The pacer on virtual time: windows, start, accuracy, catch-up after a stall, fairness."""

from __future__ import annotations

import asyncio

import pytest

from daemon.engine.pacing import Pacer, ProviderGate, Turn
from tests.unit.engine.rates import achieved_rate, max_in_window
from tests.unit.engine.virtual_loop import VirtualTimeLoop, run_virtual


async def _slots(rate: float, count: int, consumers: int = 50,
                 stall_at: set[int] | None = None, stall: float = 0.0) -> list[float]:
    pacer = Pacer(rate)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    remaining = [count]

    async def consumer() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await pacer.acquire()
            times.append(loop.time())
            if stall_at and len(times) in stall_at:
                assert isinstance(loop, VirtualTimeLoop)
                loop.advance(stall)  # the loop was blocked (a GC pass, a big write)

    await asyncio.gather(*(consumer() for _ in range(consumers)))
    return times


@pytest.mark.parametrize("rate", [1, 40, 165, 500, 2000])
def test_no_one_second_window_holds_more_than_the_rate(rate: int) -> None:
    count = rate * 8 if rate > 1 else 12
    times = run_virtual(_slots(rate, count), late_by=0.002)
    assert max_in_window(times, 1.0) <= rate


@pytest.mark.parametrize("rate", [1, 40, 165, 500, 2000])
def test_the_achieved_rate_is_within_one_percent_under(rate: int) -> None:
    count = rate * 8 if rate > 1 else 12
    times = run_virtual(_slots(rate, count), late_by=0.001)
    assert 0.99 <= achieved_rate(times) / rate <= 1.0


@pytest.mark.parametrize("rate", [40, 500, 2000])
def test_the_first_call_goes_at_once_and_no_burst_follows(rate: int) -> None:
    async def scenario() -> tuple[float, list[float]]:
        start = asyncio.get_running_loop().time()
        return start, await _slots(rate, rate)

    start, times = run_virtual(scenario())
    assert times[0] - start < 0.001
    first_100ms = sum(1 for t in times if t < start + 0.1)
    assert first_100ms <= rate * 0.1 + 2  # not a bucket's worth at once


@pytest.mark.parametrize("rate", [1000, 2000])
def test_a_stall_is_caught_up_smoothly_and_within_the_windows(rate: int) -> None:
    times = run_virtual(_slots(rate, rate * 5, stall_at={rate * 3 // 2}, stall=0.15),
                        late_by=0.001)
    assert max_in_window(times, 1.0) <= rate
    # What the stall held back goes out at ≤ 1.3 × the rate (in 10 ms grains), not at once.
    assert max_in_window(times, 0.1) <= rate * 0.15 + 1
    assert achieved_rate(times) / rate >= 0.99  # 150 ms of calls were not lost


@pytest.mark.parametrize("rate", [165, 2000])
def test_on_a_millisecond_clock_the_pacer_wakes_per_grain_not_per_call(rate: int) -> None:
    """uvloop's clock reads in whole ms: a limiter waiting a fraction of a ms per call would
    find no time passed and wait again, a busy spin (machine-limits §3)."""
    loop = VirtualTimeLoop(resolution=0.001, late_by=0.0005)
    try:
        times = loop.run_until_complete(_slots(rate, rate * 4))
    finally:
        loop.close()
    assert 0.99 <= achieved_rate(times) / rate <= 1.0
    assert max_in_window(times, 1.0) <= rate
    assert max_in_window(times, 0.1) <= rate * 0.15 + 1
    seconds = times[-1] - times[0]
    assert loop.waits / seconds <= max(3 * rate / 10, 600)  # grains of 5 ms (2,000/s: 200/s)


def test_slots_are_granted_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        pacer = Pacer(100)
        order: list[str] = []

        async def run(name: str) -> None:
            for _ in range(5):
                await pacer.acquire()
                order.append(name)

        await asyncio.gather(run("a"), run("b"))
        return order

    order = run_virtual(scenario())
    assert order.count("a") == order.count("b") == 5
    # Once both wait, they take turns (the very first turns go to whoever came first).
    assert all(abs(order[:n].count("a") - order[:n].count("b")) <= 2 for n in range(11))
    assert all(order[i] != order[i + 1] for i in range(2, len(order) - 2))


def test_a_provider_pause_holds_calls_until_it_ends() -> None:
    async def scenario() -> float:
        gate = ProviderGate("hook", concurrency=2, rate=None)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert gate.pause(1.5)
        assert not gate.pause(0.5)  # a shorter pause does not shorten it
        await gate.wait_unpaused()
        return loop.time() - start

    assert run_virtual(scenario()) >= 1.5


async def _holder(turn: Turn, name: str, order: list[str], release: asyncio.Event) -> None:
    async with turn:
        order.append(name)
        await release.wait()


def test_the_turn_goes_to_the_waiters_in_arrival_order_skipping_the_cancelled() -> None:
    async def scenario() -> list[str]:
        turn, order = Turn(), []
        releases = {name: asyncio.Event() for name in "abcd"}
        tasks = {}
        for name in "abcd":
            tasks[name] = asyncio.create_task(_holder(turn, name, order, releases[name]))
            await asyncio.sleep(0)
        tasks["b"].cancel()  # cancelled while waiting: skipped, the queue unchanged
        await asyncio.sleep(0)
        late = asyncio.create_task(_holder(turn, "e", order, releases["a"]))  # comes last
        for name in "acd":
            releases[name].set()
            await asyncio.sleep(0)
        await asyncio.gather(tasks["a"], tasks["c"], tasks["d"], late)
        assert tasks["b"].cancelled() and not turn.locked()
        return order

    assert run_virtual(scenario()) == ["a", "c", "d", "e"]


def test_a_waiter_cancelled_once_handed_the_turn_passes_it_on() -> None:
    async def scenario() -> list[str]:
        turn, order = Turn(), []
        go = asyncio.Event()
        go.set()
        async with turn:
            b = asyncio.create_task(_holder(turn, "b", order, go))
            c = asyncio.create_task(_holder(turn, "c", order, go))
            await asyncio.sleep(0)  # both wait
        b.cancel()  # the turn is b's already (handed on release), b not yet running
        await c
        await asyncio.gather(b, return_exceptions=True)
        assert b.cancelled() and not turn.locked()
        return order

    assert run_virtual(scenario()) == ["c"]


def test_a_waiter_cancelled_then_dropped_by_a_release_leaves_the_turn_sound() -> None:
    async def scenario() -> list[str]:
        turn, order = Turn(), []
        first, other = asyncio.Event(), asyncio.Event()
        other.set()
        a = asyncio.create_task(_holder(turn, "a", order, first))
        await asyncio.sleep(0)
        b = asyncio.create_task(_holder(turn, "b", order, other))
        c = asyncio.create_task(_holder(turn, "c", order, other))
        await asyncio.sleep(0)
        first.set()  # a runs first: its release drops b's waiter, cancelled below
        b.cancel()
        await asyncio.gather(a, c)
        await asyncio.gather(b, return_exceptions=True)
        assert b.cancelled() and not turn.locked()
        async with turn:  # free again, at once
            order.append("d")
        return order

    assert run_virtual(scenario()) == ["a", "c", "d"]


# -- rate changes and pool shares -----------------------------------------------------------


async def _paced(pacer: Pacer, seconds: float, change_at: float | None = None,
                 new_rate: float = 0.0) -> list[float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: list[float] = []

    async def consumer() -> None:
        while loop.time() - start < seconds:
            await pacer.acquire()
            times.append(loop.time() - start)
            if change_at is not None and times[-1] >= change_at and pacer.rate != new_rate:
                pacer.set_rate(new_rate)

    await asyncio.gather(*(consumer() for _ in range(20)))
    return times


@pytest.mark.parametrize("rate", [0.5, 18.75, 333.3])
def test_a_pool_share_holds_floor_rate_in_every_whole_second(rate: float) -> None:
    times = run_virtual(_paced(Pacer(rate, whole_seconds=True), 12.0), late_by=0.002)
    bound = max(1, int(rate)) if rate >= 1 else 1
    assert max_in_window(times, 1.0) <= bound
    if rate < 1:
        assert max_in_window(times, 1.0 / rate) <= 1  # one call per 1/rate seconds


def test_a_rate_decrease_holds_the_new_rate_in_every_window_ending_after_it() -> None:
    times = run_virtual(_paced(Pacer(200), 6.0, change_at=2.0, new_rate=20), late_by=0.001)
    changed = next(t for t in times if t >= 2.0)
    # Every 1 s window that ends at a call made after the change holds at most 20 (+ the one
    # call that made the change itself, paced at the old rate).
    after = [t for t in times if t > changed]
    for end in after:
        assert sum(1 for t in times if end - 1.0 < t <= end) <= 20 + 1
    assert len(after) >= 20 * 3


def test_a_rate_increase_brings_no_burst() -> None:
    times = run_virtual(_paced(Pacer(20), 6.0, change_at=2.0, new_rate=200), late_by=0.001)
    assert max_in_window(times, 1.0) <= 200
    assert max_in_window(times, 0.1) <= 200 * 0.15 + 1
    assert achieved_rate([t for t in times if t >= 3.0]) >= 0.97 * 200


async def _arrivals(rate: int, count: int, slow: range, *, report: bool,
                    consumers: int = 50) -> list[float]:
    """Each call's request goes out 0.1 ms after its slot, 15 ms for the calls in `slow`
    (their connections are being opened: a start, a restart); the arrivals' times."""
    pacer = Pacer(rate)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    remaining = [count]

    async def consumer() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            async with pacer.turn():
                await pacer.token()
                await pacer.window()
                number = pacer.record()
            await asyncio.sleep(0.015 if number - 1 in slow else 0.0001)
            if report:
                pacer.sent(number, loop.time())
            arrivals.append(loop.time())

    await asyncio.gather(*(consumer() for _ in range(consumers)))
    return arrivals


@pytest.mark.parametrize("rate", [500, 2000])
def test_calls_count_from_when_their_request_went_out(rate: int) -> None:
    # The first 40 calls wait 15 ms for new connections: a window opening at the first
    # arrival would hold more than the rate were they counted from their slots.
    slow = range(40)
    unreported = run_virtual(_arrivals(rate, rate * 3, slow, report=False))
    assert max_in_window(unreported, 1.0) > rate  # what the reports are for
    arrivals = run_virtual(_arrivals(rate, rate * 3, slow, report=True))
    assert max_in_window(arrivals, 1.0) <= rate
    assert achieved_rate(arrivals) / rate >= 0.99


def test_a_late_request_lifts_every_later_kept_call() -> None:
    async def scenario() -> tuple[float, float]:
        pacer = Pacer(10)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(10):
            await pacer.acquire()
        pacer.sent(1, start + 0.5)  # the first call went out last, 0.5 s late
        await pacer.acquire()  # the 11th waits for a second after the first call's request
        eleventh = loop.time()
        pacer.sent(12, loop.time() + 10.0)  # a number past the last: ignored safely
        return start, eleventh

    start, eleventh = run_virtual(scenario())
    assert eleventh >= start + 0.5 + 1.0


def test_a_call_reported_after_leaving_the_kept_second_lifts_them_all() -> None:
    async def scenario() -> tuple[float, float]:
        pacer = Pacer(5)
        loop = asyncio.get_running_loop()
        for _ in range(12):
            await pacer.acquire()
        late = loop.time() + 0.3
        pacer.sent(2, late)  # call 2 is no longer kept; its request went out only now
        await pacer.acquire()
        return late, loop.time()

    late, thirteenth = run_virtual(scenario())
    assert thirteenth >= late + 1.0


def test_a_pool_share_counts_a_call_from_when_its_request_went_out() -> None:
    from daemon.engine.pool_shares import PoolGate
    from daemon.infra.clock import SystemClock

    async def scenario() -> tuple[float, float]:
        clock = SystemClock()
        gate = PoolGate("landing", clock)
        gate.grant(5, valid_until=clock.monotonic() + 3600)
        loop = asyncio.get_running_loop()
        start = loop.time()
        reports = [await gate.slot() for _ in range(5)]
        reports[0](start + 0.4)  # the first call's request left 0.4 s after its slot
        await gate.slot()
        return start, loop.time()

    start, sixth = run_virtual(scenario())
    assert sixth >= start + 0.4 + 1.0


def test_what_a_lowered_share_still_spends_is_its_excess_until_it_ages_out() -> None:
    """`excess` read as a pool share is lowered (600 → 400/s): until `seconds` from then the
    windows hold at most 400 + `amount` calls, and 400 after; since the last second's calls
    were evenly paced, that is about a third of a second, not the 1.25 s a release used to
    be reserved for."""
    state: dict[str, float] = {}

    async def scenario() -> list[float]:
        pacer = Pacer(600, whole_seconds=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        times: list[float] = []

        async def consumer() -> None:
            while loop.time() - start < 6.0:
                await pacer.acquire()
                now = loop.time() - start
                times.append(now)
                if now >= 3.0 and "at" not in state:
                    amount, seconds = pacer.excess(400)
                    state.update(at=now, amount=amount, seconds=seconds)
                    pacer.set_rate(400)

        await asyncio.gather(*(consumer() for _ in range(20)))
        return times

    times = sorted(run_virtual(scenario(), late_by=0.001))
    at, amount, seconds = state["at"], state["amount"], state["seconds"]
    assert 180 <= amount <= 200
    assert 0.3 <= seconds <= 0.36
    for end in (t for t in times if t > at):
        held = sum(1 for t in times if end - 1.0 < t <= end)
        assert held <= (400 + amount if end < at + seconds else 400)
    assert Pacer(10).excess(5) == (0, 0.0)  # no calls yet: nothing spent
