"""Delivery receipts (SPEC §9.5): what became of a sent message, as its provider tells."""
