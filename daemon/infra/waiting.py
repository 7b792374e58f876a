"""Two waits the long-running tasks share: "until woken or a sleep ends", and "a task's
end within a grace, unless forced"."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def woken_or(wake: asyncio.Event, sleep: Coroutine[Any, Any, None], name: str) -> None:
    """Until `wake` is set or `sleep` (a clock sleep) ends; both waits are cancelled after.
    `name` prefixes the two tasks' names (`name.wake`, `name.sleep`)."""
    if wake.is_set():
        sleep.close()
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_task(wake.wait(), name=f"{name}.wake")
    sleeper = loop.create_task(sleep, name=f"{name}.sleep")
    try:
        await asyncio.wait([waiter, sleeper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()


async def within(task: asyncio.Task[Any], grace: float, force: asyncio.Event,
                 name: str) -> bool:
    """Wait for `task` to end, at most `grace` seconds and not after `force` is set;
    whether it ended. The task is not cancelled here."""
    forced = asyncio.get_running_loop().create_task(force.wait(), name=f"{name}.force")
    try:
        await asyncio.wait([task, forced], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
        await asyncio.gather(forced, return_exceptions=True)
    return task.done()
