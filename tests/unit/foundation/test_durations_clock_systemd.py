"""Small foundation pieces: durations, the fake clock, sd_notify."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.infra.clock import FakeClock
from daemon.infra.durations import format_duration, parse_duration
from daemon.infra.systemd import Notifier


@pytest.mark.parametrize("bad", ["", "10 parsecs", "-1s", True, None, [1], "1x"])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0.25, 1, 1.5, 30, 300, 43200])
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


async def test_fake_clock_sleeps_without_waiting() -> None:
    clock = FakeClock()
    start, mono = clock.now(), clock.monotonic()
    await clock.sleep(3600)
    assert clock.now() - start == timedelta(hours=1)
    assert clock.monotonic() - mono == 3600
    await clock.sleep_until(start + timedelta(hours=2))
    assert clock.now() == start + timedelta(hours=2)


def test_notifier_sends_datagrams_and_halves_the_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    try:
        notifier = Notifier(str(path), "2000000")
        assert notifier.watchdog_interval == 1.0
        notifier.notify("READY=1")
        assert receiver.recv(100) == b"READY=1"
        notifier.close()
    finally:
        receiver.close()


def test_notifier_without_systemd_does_nothing() -> None:
    notifier = Notifier(None, None)
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.notify("READY=1")
