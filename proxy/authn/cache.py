"""The verified-credential cache every backend shares: a successful check remembered for a
while under a keyed hash of the password, and concurrent identical checks sharing one.

A registry client sends the same credentials on each of hundreds of requests; Apache and nginx
pay bcrypt (or an LDAP bind) on each. The workers of one machine share what they verified
(`learned`, `learn`), so a client spread over them costs one slow hash; and they say when
they start and end a check (`checking`, `noticed`), so a password another worker is hashing
right now is waited for, not hashed twice. A worker says again every `wait_elsewhere / 2`
seconds that a check is still under way (queued behind others in a storm); one that falls silent
for `wait_elsewhere` seconds (it died) holds nobody longer.
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
Flight = tuple[Hashable, bytes]  # (key, the secret's keyed tag)
WAIT_ELSEWHERE = 5.0  # seconds of silence from a worker hashing a password: then check here


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
        self._checks: SingleFlight[Flight, T] = SingleFlight()
        # Checks under way in another worker: done when it says it ended, or when it has said
        # nothing for `wait_elsewhere` seconds (the handle: that deadline).
        self._elsewhere: dict[Flight, tuple[asyncio.Future[None], asyncio.TimerHandle]] = {}
        self._repeating: dict[Flight, asyncio.TimerHandle] = {}  # "still checking", next said

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
            await asyncio.shield(elsewhere[0])  # ends at the latest at the deadline
            entry = self._remembered(key, tag)  # learned meanwhile, if it was right
            if entry is not None:
                return entry.value

        def settle(done: asyncio.Future[T]) -> None:
            try:
                self._settle(flight, done, keep, lifetime)
            finally:
                repeating = self._repeating.pop(flight, None)
                if repeating is not None:
                    repeating.cancel()
                self._told(flight, ended=True)  # after the success was shared, if it was one

        return await self._checks.join(flight, lambda: self._verify(flight, verify), settle)

    def _remembered(self, key: Hashable, tag: bytes) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            return None
        return entry if hmac.compare_digest(entry.tag, tag) else None

    def _verify(self, flight: Flight, verify: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        self._still_checking(flight)
        return verify()

    def _still_checking(self, flight: Flight) -> None:
        """Tell the others this check is under way, now and every half deadline until it ends."""
        loop = asyncio.get_running_loop()
        # The next telling is timed from before this one: a deadline this one sets falls after
        # it, even when the process is descheduled while telling.
        began = loop.time()
        self._told(flight, ended=False)
        if self._checking is not None:
            self._repeating[flight] = loop.call_at(
                began + self._wait_elsewhere / 2, self._still_checking, flight
            )

    def _told(self, flight: Flight, ended: bool) -> None:
        if self._checking is not None:
            self._checking(*flight, ended)

    def noticed(self, key: Hashable, tag: bytes, ended: bool) -> None:
        """Another worker started or ended checking a password (on the running loop)."""
        flight = (key, tag)
        waiting = self._elsewhere.pop(flight, None)
        if waiting is not None:
            waiting[1].cancel()
        if ended:
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(None)
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future() if waiting is None else waiting[0]
        # An end that never comes (a worker that died) holds nobody past the deadline; each
        # "still checking" moves it.
        deadline = loop.call_later(self._wait_elsewhere, self.noticed, key, tag, True)
        self._elsewhere[flight] = (future, deadline)

    def _settle(
        self,
        flight: Flight,
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
