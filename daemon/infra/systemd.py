"""sd_notify: READY=1, WATCHDOG=1, STOPPING=1 over $NOTIFY_SOCKET (a datagram socket).

Does nothing when the daemon is not started by systemd (no NOTIFY_SOCKET).
"""

from __future__ import annotations

import contextlib
import socket


class Notifier:
    """Sends state strings to the service manager, if there is one."""

    def __init__(self, address: str | None, watchdog_usec: str | None = None) -> None:
        self._address: str | bytes | None = None
        if address:
            # A leading '@' names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        if watchdog_usec and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            self.watchdog_interval = int(watchdog_usec) / 1_000_000 / 2
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> None:
        """Send one state line; a missing manager is not an error."""
        if self._address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        # The manager may have gone away; there is nothing useful to do about it.
        with contextlib.suppress(OSError):
            self._socket.sendto(state.encode(), self._address)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
