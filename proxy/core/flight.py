"""Single flight: concurrent calls for one key share one computation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Settle = Callable[[asyncio.Future[V]], None]


class SingleFlight(Generic[K, V]):
    """The computation under way for a key, shared by every caller that asks for it."""

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V]] = {}

    def start(
        self, key: K, compute: Callable[[], Awaitable[V]], settle: Settle[V] | None = None
    ) -> asyncio.Future[V]:
        """The flight for `key`: the one under way, or `compute()` started now."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(compute())
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
            if settle is not None:
                flight.add_done_callback(settle)
        return flight

    async def join(
        self, key: K, compute: Callable[[], Awaitable[V]], settle: Settle[V] | None = None
    ) -> V:
        """Its result, waited for without cancelling it for the others."""
        return await asyncio.shield(self.start(key, compute, settle))

    def under_way(self, key: K) -> bool:
        return key in self._flights
