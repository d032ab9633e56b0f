"""The verified-credential cache every backend shares: a successful check remembered for a
while under a keyed hash of the password, and concurrent identical checks sharing one.

A registry client sends the same credentials on each of hundreds of requests; Apache and nginx
pay bcrypt (or an LDAP bind) on each. The workers of one machine share what they verified
(`learned`, `learn`), so a client spread over them costs one slow hash.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..core.flight import SingleFlight
from ..core.lru import LRU
from . import fingerprint
from .credentials import PasswordHash

T = TypeVar("T")


@dataclass(frozen=True)
class CacheSettings:
    """`cache.credentials_ttl` / `cache.credentials_size` in the config."""

    ttl: float = 300.0
    size: int = 10_000


@dataclass(frozen=True)
class _Entry(Generic[T]):
    tag: bytes
    expires: float
    value: T


class VerifiedCache(Generic[T]):
    """A bounded LRU of verified credentials with single-flight checks."""

    def __init__(
        self,
        ttl: float,
        size: int,
        clock: Callable[[], float] = time.monotonic,
        key: bytes | None = None,
        learned: Callable[[Hashable, bytes, float], None] | None = None,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._key = key or secrets.token_bytes(32)
        self._learned = learned  # told of each success: (key, tag, seconds it holds)
        self._entries: LRU[Hashable, _Entry[T]] = LRU(size)
        self._checks: SingleFlight[tuple[Hashable, bytes], T] = SingleFlight()

    async def check(
        self,
        key: Hashable,
        secret: bytes,
        verify: Callable[[], Awaitable[T]],
        keep: Callable[[T], bool],
        lifetime: Callable[[T], float] | None = None,
    ) -> T:
        """The remembered answer for (key, secret), or `verify()`'s, shared with every identical
        check under way and remembered when `keep(answer)` (at most `lifetime(answer)`)."""
        tag = fingerprint(self._key, secret)
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry.expires > self._clock()
            and hmac.compare_digest(entry.tag, tag)
        ):
            return entry.value
        flight = (key, tag)

        def settle(done: asyncio.Future[T]) -> None:
            self._settle(flight, done, keep, lifetime)

        return await self._checks.join(flight, verify, settle)

    def _settle(
        self,
        flight: tuple[Hashable, bytes],
        done: asyncio.Future[T],
        keep: Callable[[T], bool],
        lifetime: Callable[[T], float] | None,
    ) -> None:
        if done.cancelled() or done.exception() is not None or self.ttl <= 0:
            return
        value = done.result()
        seconds = self.ttl if lifetime is None else min(self.ttl, lifetime(value))
        if keep(value) and seconds > 0:
            key, tag = flight
            self._remember(key, tag, seconds, value)
            if self._learned is not None:
                self._learned(key, tag, seconds)

    def learn(self, key: Hashable, tag: bytes, seconds: float, value: T) -> None:
        """What another worker verified, remembered as if verified here."""
        if self.ttl > 0 and seconds > 0:
            self._remember(key, tag, min(seconds, self.ttl), value)

    def _remember(self, key: Hashable, tag: bytes, seconds: float, value: T) -> None:
        self._entries.size = self.size  # the setting may have changed at a reload
        self._entries.put(key, _Entry(tag, self._clock() + seconds, value))

    def forget(self, key: Hashable | None = None) -> None:
        """Drop one remembered key, or all of them."""
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key)

    def __len__(self) -> int:
        return len(self._entries)


def verify_hash(
    cache: VerifiedCache[bool], executor: Executor, user: str, stored: PasswordHash, secret: bytes
) -> Awaitable[bool]:
    """Check `secret` against a stored hash in the hashing pool, remembered under (user,
    stored hash): a changed or removed hash misses at once."""
    loop = asyncio.get_running_loop()
    # The check itself is the awaitable: a remembered success costs no extra coroutine.
    return cache.check(
        f"{user}\0{stored.value}",
        secret,
        lambda: loop.run_in_executor(executor, stored.verify, secret),
        keep=bool,
    )
