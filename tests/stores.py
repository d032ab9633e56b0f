"""Replicas as tests/test_redis_store.py and tests/test_redis_sentinel.py make them, in one
process: each a RedisStore with its own origin, feeding its own throttle as a server does,
and remembering every event it was handed (with its age)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from proxy.authn.throttle import Throttle, ThrottleSettings
from proxy.state.events import Event
from proxy.state.redis_store import RedisStore
from proxy.state.store import LocalStore, StateSettings

SETTINGS = ThrottleSettings(attempts=4, window=60.0, max_delay=100.0)


@dataclass
class Replica:
    store: RedisStore
    throttle: Throttle
    seen: list[tuple[Event, float]] = field(default_factory=list)

    def received(self, event: Event) -> int:
        return sum(1 for seen, _ in self.seen if seen == event)


async def start_replica(
    settings: StateSettings, origin: bytes | None = None, local: LocalStore | None = None
) -> Replica:
    """A started replica (closing its store is the caller's)."""
    store = RedisStore(
        settings,
        local or LocalStore(),
        origin or secrets.token_hex(8).encode(),
        lambda: SETTINGS.window + SETTINGS.max_delay,
    )
    throttle = Throttle(store.publish)
    replica = Replica(store, throttle)
    store.subscribe(lambda event, age: replica.seen.append((event, age)))
    store.subscribe(lambda e, age: throttle.apply(e, time.monotonic() - age, SETTINGS))
    await store.start()
    return replica


def locked(replica: Replica, user: str, address: str) -> bool:
    return replica.throttle.retry_after(user, address, time.monotonic(), SETTINGS) > 0


def fail(replica: Replica, user: str, address: str) -> None:
    replica.throttle.failure(user, address, time.monotonic(), SETTINGS)
