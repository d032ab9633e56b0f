"""Work that runs beside the requests: a step repeated forever, and tasks stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def every(seconds: float, chore: Callable[[], Awaitable[object]]) -> None:
    """`chore()` every `seconds`, until cancelled."""
    while True:
        await asyncio.sleep(seconds)
        await chore()


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks (None: never started) and wait for each to end."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
