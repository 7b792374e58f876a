"""The stages `campaignd run` starts, in order (the service stops them in reverse)."""

from __future__ import annotations

from daemon.engine import stage as engine
from daemon.providers import registry
from daemon.service import StageFactory


def default_stages() -> list[StageFactory]:
    """Providers, then the engine that uses them: the engine stops (drains) first."""
    return [registry.stage, engine.stage]
