"""The verified-credential cache every backend shares: a successful check remembered for a
while under a keyed hash of the password, and concurrent identical checks sharing one.

A registry client sends the same credentials on each of hundreds of requests; Apache and nginx
pay bcrypt (or an LDAP bind) on each. The workers of one machine share what they verified
(`learned`, `learn`), so a client spread over them costs one slow hash; and they say when
they start and end a check (`checking`, `noticed`), so a password another worker is hashing
right now is waited for (at most `wait_elsewhere` seconds), not hashed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
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
WAIT_ELSEWHERE = 5.0  # seconds: longer than a slow hash in a busy pool; then check here


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
        checking: Callable[[Hashable, bytes, bool], None] | None = None,
        wait_elsewhere: float = WAIT_ELSEWHERE,
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._key = key or secrets.token_bytes(32)
        self._learned = learned  # told of each success: (key, tag, seconds it holds)
        self._checking = checking  # told of each check here: (key, tag, ended)
        self._wait_elsewhere = wait_elsewhere
        self._entries: LRU[Hashable, _Entry[T]] = LRU(size)
        self._checks: SingleFlight[tuple[Hashable, bytes], T] = SingleFlight()
        # Checks under way in another worker: done when it says it ended (or at the deadline).
        self._elsewhere: dict[tuple[Hashable, bytes], asyncio.Future[None]] = {}

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
        entry = self._remembered(key, tag)
        if entry is not None:
            return entry.value
        flight = (key, tag)
        elsewhere = self._elsewhere.get(flight)
        if elsewhere is not None and not self._checks.under_way(flight):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(elsewhere), self._wait_elsewhere)
            entry = self._remembered(key, tag)  # learned meanwhile, if it was right
            if entry is not None:
                return entry.value

        def settle(done: asyncio.Future[T]) -> None:
            try:
                self._settle(flight, done, keep, lifetime)
            finally:
                self._told(flight, ended=True)  # after the success was shared, if it was one

        return await self._checks.join(flight, lambda: self._verify(flight, verify), settle)

    def _remembered(self, key: Hashable, tag: bytes) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            return None
        return entry if hmac.compare_digest(entry.tag, tag) else None

    def _verify(
        self, flight: tuple[Hashable, bytes], verify: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        self._told(flight, ended=False)
        return verify()

    def _told(self, flight: tuple[Hashable, bytes], ended: bool) -> None:
        if self._checking is not None:
            self._checking(*flight, ended)

    def noticed(self, key: Hashable, tag: bytes, ended: bool) -> None:
        """Another worker started or ended checking a password (on the running loop)."""
        flight = (key, tag)
        if ended:
            waiting = self._elsewhere.pop(flight, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        elif flight not in self._elsewhere:
            loop = asyncio.get_running_loop()
            self._elsewhere[flight] = loop.create_future()
            # An end that never comes (a worker that died) holds nobody past the deadline.
            loop.call_later(self._wait_elsewhere, self.noticed, key, tag, True)

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
