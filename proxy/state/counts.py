"""Rate-limit counts shared by workers and replicas without a round trip on the request path.

A request asks `used` and adds with `count`: both are this process's `Tally` (in memory, at
once). With replicas (`SharedCounts`) a background loop sends what was added and learns the
shared totals, at most every SYNC_INTERVAL seconds while there is anything to send or ask
about, and not at all while idle: INCRBY on a window key in Redis, whose answer is the total
over every replica. A failed sync keeps its amounts for the next one: counting goes on here
alone meanwhile, and is tried again every interval until the store answers. The workers of
one machine (`MeshCounts`) tell each other every count as it is made, a datagram each, and
add the others' as they arrive (`heard`).
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

    def __init__(self, send: Send, clock: Callable[[], float] = time.time) -> None:
        self._send = send
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
            await asyncio.sleep(SYNC_INTERVAL)

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


class MeshCounts:
    """The rate-limit counts of one machine's workers, with no shared total: each count is
    told to the others as it is made, before the request that made it goes on."""

    # Told at once, not at the loop's next turn: a loop kept busy (handshakes, a burst) could
    # otherwise hold a count back for tens of milliseconds while the others allow on.

    def __init__(self, tell: Callable[[Event], None]) -> None:
        self._tell = tell
        self._tally = Tally()

    def used(self, key: str, expires: int) -> int:
        return self._tally.known(key, expires)

    def count(self, key: str, expires: int, amount: int) -> None:
        if amount:
            self._tally.heard(key, expires, amount)
            self._tell(Counted(key, str(expires), str(amount)))

    def heard(self, event: Event, _age: float) -> None:
        """Another worker's count, told through the worker mesh."""
        if isinstance(event, Counted):
            try:
                self._tally.heard(event.key, int(event.expires), int(event.amount))
            except ValueError:
                return  # malformed: dropped, as every bad event is
