"""Taking, keeping and losing campaigns: this daemon's incarnation and its leases' heartbeat.

A campaign's runs are executed by the daemon holding its lease (`engine_leases`, expiry in
database time, `store/leases.py`). The holder renews all its leases in one statement every
`lease_ttl / 4` (`Heartbeat`), and relies on a lease only until `lease_ttl − max(1 s,
lease_ttl/3)` after its last successful renewal (`HeldLease.valid`): well before another
daemon could take it over. A restarted daemon knows its previous incarnation is dead when
it gets the state dir's lock (`claim_incarnation`), and frees that incarnation's leases
one second later (`RELEASE_LINGER`) instead of waiting out `lease_ttl`.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path
from typing import IO

from daemon.engine.recording import DB_ERRORS, raise_if_cancelling
from daemon.infra.clock import Clock
from daemon.infra.logs import get_logger
from daemon.store import Pool, leases

log = get_logger(__name__)

RELEASE_LINGER = 1.0  # a released lease stays ours this long (the rate's window)
LOCK_FILE = "engine.lock"
HOLDER_FILE = "engine.holder"


def claim_incarnation(state_dir: Path, holder: str) -> tuple[IO[str] | None, str | None]:
    """Lock `state_dir` for this process; the previous (dead) holder's name, if any.

    (None, None) when another live daemon uses the same state dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None, None
    path = state_dir / HOLDER_FILE
    previous = path.read_text().strip() if path.exists() else None
    path.write_text(holder + "\n")
    return lock, previous or None


class HeldLease:
    """Our lease on a campaign, as we may rely on it: valid until a local monotonic time."""

    def __init__(self, clock: Clock, ttl: float, campaign_id: str, generation: int,
                 since: float) -> None:
        self._clock = clock
        self._ttl = ttl
        self.campaign_id = campaign_id
        self.generation = generation
        self.valid_until = 0.0
        self.renewed(since)

    def renewed(self, since: float) -> None:
        """The database extended it by ttl from a moment after `since` (monotonic)."""
        ttl = self._ttl
        self.valid_until = since + ttl - min(max(1.0, ttl / 3), ttl / 2)

    def lose(self) -> None:
        self.valid_until = float("-inf")

    def valid(self) -> bool:
        return self._clock.monotonic() < self.valid_until


class Heartbeat:
    """Renews every lease in `held`, each `ttl / 4`; a lease not renewed is lost (and
    `on_lost(campaign_id)` is told)."""

    def __init__(self, db: Pool, clock: Clock, holder: str, ttl: float,
                 on_lost: Callable[[str], None]) -> None:
        self.db = db
        self.clock = clock
        self.holder = holder
        self.ttl = ttl
        self.on_lost = on_lost
        self.held: dict[str, HeldLease] = {}

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.ttl / 4)
            held = dict(self.held)
            if not held:
                continue
            since = self.clock.monotonic()
            try:
                kept = await leases.renew(self.db, self.holder, list(held), self.ttl)
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                log.warning("lease.renew_failed", campaigns=len(held), error=str(exc))
                continue
            for campaign_id, lease in held.items():
                if campaign_id in kept:
                    lease.renewed(since)
                elif self.held.get(campaign_id) is lease:
                    lease.lose()
                    self.on_lost(campaign_id)
