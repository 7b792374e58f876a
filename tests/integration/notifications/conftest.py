"""The engine's fixtures (gateway, start_engine) for the outbox's end-to-end test."""

from tests.integration.engine.conftest import gateway, start_engine

__all__ = ["gateway", "start_engine"]
