"""Work that runs beside the requests: a step repeated forever, and tasks stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def every(seconds: float, chore: Callable[[], Awaitable[object]]) -> None:
    """`chore()` every `seconds`, until cancelled."""
    task = asyncio.current_task()
    while True:
        await asyncio.sleep(seconds)
        await chore()
        # A chore may end normally although it was cancelled: its client library turned the
        # CancelledError into an error of its own, which the chore caught (seen with a Redis
        # poll). Going on would leave `stop()`, and a worker's shutdown with it, waiting
        # forever.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks (None: never started) and wait for each to end."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
