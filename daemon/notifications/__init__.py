"""Lifecycle notifications (SPEC §9.4): the outbox deliverer and its signed POSTs."""
