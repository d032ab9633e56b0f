"""Chores: a repeated step ends with its task, even when the step lets a cancellation go."""

from __future__ import annotations

import asyncio
import contextlib

from proxy.core.chores import every


async def test_a_chore_that_swallows_its_cancellation_still_ends_the_loop() -> None:
    """As a Redis poll does when its client turns the CancelledError into a timeout of its
    own, which the poll catches as "Redis away": `stop()`, which waits for it, must return."""
    running = asyncio.Event()

    async def poll() -> None:
        running.set()
        # A command never answered; its cancellation swallowed, as the library and the
        # chore's `except` made of it.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    task = asyncio.ensure_future(every(0, poll))
    await running.wait()
    task.cancel()  # what `stop()` does before it waits for the task
    await asyncio.wait({task}, timeout=5)  # the bound only stops a broken run from hanging
    assert task.cancelled()
