"""Running a coroutine on asyncio or uvloop (the instruments use uvloop when present)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T], *, uvloop_wanted: bool) -> T:
    """`asyncio.run(main)`, on uvloop when wanted and installed."""
    if uvloop_wanted:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def loop_name(uvloop_wanted: bool) -> str:
    """What `run_loop` will use."""
    if uvloop_wanted:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return "asyncio"
