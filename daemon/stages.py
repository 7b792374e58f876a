"""The stages `campaignd run` starts, in order (the service stops them in reverse)."""

from __future__ import annotations

from daemon.providers import registry
from daemon.service import StageFactory


def default_stages() -> list[StageFactory]:
    """Providers first (so they stop last, after the engine drained its sends)."""
    return [registry.stage]
