"""Rate-limit counts shared by workers and replicas without a round trip on the request path.

A request asks `used` and adds with `count`: both are this process's `Tally` (in memory, at
once). A background loop sends what was added and learns the shared totals, at most every
SYNC_INTERVAL seconds while there is anything to send or ask about, and not at all while idle:
how it sends is the store's (`send`): INCRBY on a window key in Redis, whose answer is the
total over every replica; or, on one machine, telling the other workers, whose tallies add it
as it arrives (`heard`). A failed sync keeps its amounts for the next one: counting goes on
here alone meanwhile, and is tried again every interval until the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ..core.windows import Count, Tally
from ..observe import metrics
from .events import Counted, Event

log = logging.getLogger("regproxy.store")

SYNC_INTERVAL = 0.1  # seconds between syncs while counts are being made
# Send `counts` to the others: the shared totals after adding them, or None (told, no totals).
Send = Callable[[Sequence[Count]], Awaitable[Sequence[int] | None]]


class SharedCounts:
    """One process's rate-limit counts, synced in the background through `send`."""

    def __init__(
        self,
        send: Send,
        interval: float = SYNC_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock  # the wall clock: windows are the same in every replica
        self._tally = Tally()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def used(self, key: str, expires: int) -> int:
        self._wake.set()  # the next sync refreshes it
        return self._tally.used(key, expires)

    def count(self, key: str, expires: int, amount: int) -> None:
        self._tally.add(key, expires, amount)
        self._wake.set()

    def heard(self, event: Event, _age: float) -> None:
        """Another worker's count, told through the worker mesh."""
        if isinstance(event, Counted):
            try:
                self._tally.heard(event.key, int(event.expires), int(event.amount))
            except ValueError:
                return  # malformed: dropped, as every bad event is

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop syncing; send what is left once (a graceful stop still counts)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sync()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.sync()
            await asyncio.sleep(self._interval)

    async def sync(self) -> None:
        """Send what was counted here and learn the totals of what was asked about."""
        counts = self._tally.outgoing(self._clock())
        if not counts:
            return
        try:
            totals = await self._send(counts)
        except BaseException as exc:  # kept for the next sync (or the last, at close)
            self._tally.unsent(counts)
            if not isinstance(exc, Exception):
                raise
            self._wake.set()  # tried again after an interval, requests or not
            metrics.RECORD.rate_limit_sync_failed()
            if not self._failing:
                self._failing = True
                log.warning("rate limits: counting on this worker alone until the state store "
                            "answers again (%s)", exc or type(exc).__name__)  # fmt: skip
            return
        if self._failing:
            self._failing = False
            log.warning("rate limits: sharing counts again")
        self._tally.settled(counts, totals)
