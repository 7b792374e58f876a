"""campaignd: a self-hosted daemon for API-triggered messaging campaigns."""

__version__ = "0.1.0"
