"""Server-made ids: a prefix and a ULID (48-bit milliseconds + 80 random bits, Crockford
base32, 26 characters), so that ids sort by creation time and never collide in practice.
Each process hands them out in increasing order."""

from __future__ import annotations

import os
from datetime import datetime

from daemon.models import CampaignId, RunId

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class _Monotonic:
    """Within one process, each ULID is greater than the previous one, even within a
    millisecond or when the clock steps back (the random part then counts up)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self, milliseconds: int) -> int:
        value = (milliseconds << 80) | int.from_bytes(os.urandom(10), "big")
        if value <= self.last:
            value = self.last + 1
        self.last = value
        return value


_SEQUENCE = _Monotonic()


def ulid(at: datetime) -> str:
    """A ULID for the instant `at` (timezone-aware)."""
    milliseconds = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    value = _SEQUENCE.next(milliseconds) & ((1 << 128) - 1)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_run_id(at: datetime) -> RunId:
    return RunId("run_" + ulid(at))


def new_campaign_id(at: datetime) -> CampaignId:
    return CampaignId("cmp_" + ulid(at))
