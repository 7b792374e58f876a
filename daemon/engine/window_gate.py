"""The send-window gate of a campaign worker (SPEC §9.2): no call starts while closed.

Checked at the call, with no await between the check and the call's start: `open_now()`
costs a monotonic clock read while the current window lasts (the calendar is computed
once per opening). When a window closes, the next caller waits in `wait_open()` until
the next opening, the others queue behind it (they hold no slot of the provider), and
sending resumes there through the pacer, which restarts nearly full after an idle spell:
no burst. A window closing is a pause the calendar makes: nothing is excluded by it; the
plan counted only open time (`planner.plan_run`).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from daemon.infra.clock import Clock
from daemon.planning import windows


class WindowGate:
    """Whether a campaign's windows are open now, and a wait for the next opening."""

    def __init__(self, open_windows: Sequence[windows.Window], clock: Clock,
                 log: structlog.stdlib.BoundLogger) -> None:
        self.windows = tuple(open_windows)
        self.clock = clock
        self.log = log
        self._open_until = float("-inf")  # monotonic time the current window closes
        self._closed = False  # logged run.window_closed, not yet reopened

    def open_now(self) -> bool:
        """True while the window known open lasts (no calendar work on this path)."""
        if self.clock.monotonic() < self._open_until:
            return True
        return self._look()

    async def wait_open(self) -> None:
        """Return when a window is open (at once if it is)."""
        while not self.open_now():
            opening = windows.next_opening(self.windows, self.clock.now())
            if not self._closed:
                self._closed = True
                self.log.info("run.window_closed", next_opening=opening.isoformat()
                              if opening else None)
            if opening is None:  # no opening within a year: look again in an hour
                await self.clock.sleep(3600.0)
            else:
                await self.clock.sleep_until(opening)

    def _look(self) -> bool:
        now = self.clock.now()
        until = windows.open_until(self.windows, now)
        if until is None:
            return False
        self._open_until = self.clock.monotonic() + (until - now).total_seconds()
        if self._closed:
            self._closed = False
            self.log.info("run.window_opened", closes_at=until.isoformat())
        return True
