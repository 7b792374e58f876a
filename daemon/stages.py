"""The stages `campaignd run` starts, in order (the service stops them in reverse)."""

from __future__ import annotations

from daemon.service import StageFactory


def default_stages() -> list[StageFactory]:
    """Providers, then the engine that uses them (added by their modules)."""
    return []
