"""Replicas sharing state through Redis (`state: {backend: redis}`): the `Store` of a fleet.

Within one machine the worker mesh (`LocalStore`) still carries events between workers, at
once; Redis carries them between replicas (the key layout: `proxy.state.redis_layout`):

- publishing appends to an outbox and wakes a writer task that sends everything waiting in
  one pipeline (XADD to the `events` stream; a new known-good pair is also kept in a sorted
  set). A request never waits for Redis;
- a reader task in each worker follows the stream (XREAD BLOCK) and hands other replicas'
  events to the subscribers with their age. What its own replica published since this process
  started is skipped: its workers had it through the mesh. Starting, it first replays the
  history (failed logins of the last `retention()` seconds, the known-good pairs), so a new or
  restarted replica starts with the others' counts;
- Redis unreachable: one warning per outage, `healthy` False (in `/health` and the
  `regproxy_store_up` metric), events kept in the outbox (bounded); the reader reconnects with
  backoff, resumes the stream where it stopped, and the writer flushes the outbox, each event
  with its delay. Everything local goes on meanwhile; locks are refused, never granted
  locally;
- named locks: SET NX PX with a random token, released by a compare-and-delete script;
- login attempts under way: a sorted set per (user, address) that one script updates, read
  together with the stream's newest entries in one round trip (so the failures of attempts
  that let go before are counted too); letting go goes out with the events published before
  it, after them. Redis away: this machine counts alone.
- rate-limit counts: each worker sends what it counted and learns the totals of what it was
  asked about in one pipeline (INCRBY, EXPIREAT) every SYNC_INTERVAL while it counts
  (`proxy.state.counts`); Redis away: each worker counts alone, and sends it all once back;
- with Redis Sentinel (`state.sentinel`), every new connection asks the sentinels where the
  primary is, so a reconnection after a failover reaches the new one; a batch of events counts
  as written once a replica has it too (WAIT), since a failover loses what only the old
  primary had; and reconnection attempts are at most SENTINEL_BACKOFF_CAP apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..core.problems import read_text
from ..core.windows import Count
from ..observe import metrics
from .counts import SharedCounts
from .events import Event, LoginSucceeded, decode, encode
from .redis_layout import (
    BACKOFF_CAP,
    BLOCK_MS,
    KNOWN_GOOD_KEPT,
    RATE_KEPT,
    READ_BATCH,
    RESERVE,
    SENTINEL_BACKOFF_CAP,
    Keys,
    after,
    backoff,
    client_options,
    entry,
    read_entry,
    resume_id,
    sentinel_options,
    start_id,
)
from .store import (
    LocalStore,
    LockTimeout,
    Release,
    StateSettings,
    StoreUnavailable,
    Subscriber,
)

if TYPE_CHECKING:
    from .shared import SharedMap

log = logging.getLogger("regproxy.store")

OUTBOX = 10_000  # events kept for Redis while it is away (the oldest dropped first)
CATCH_UP = 5.0  # seconds a starting process spends replaying history before it serves
LOCK_POLL_FIRST, LOCK_POLL_CAP = 0.01, 0.1
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
DOWN = (RedisError, OSError)  # OSError covers TimeoutError and refused connections


def secret(password: str | None, password_file: Path | None) -> str | None:
    """`password`, or the first line of `password_file` (ConfigError when unreadable)."""
    if password_file is None:
        return password
    lines = read_text(password_file).splitlines()
    return lines[0] if lines else ""


def redis_password(settings: StateSettings) -> str | None:
    """Redis's password (`password` or `password_file`)."""
    return secret(settings.password, settings.password_file)


def sentinel_password(settings: StateSettings) -> str | None:
    """The sentinels' password (`sentinel.password` or `sentinel.password_file`)."""
    return secret(settings.sentinel_password, settings.sentinel_password_file)


def sentinels(settings: StateSettings) -> Sentinel | None:
    """The clients of the sentinels (None without Sentinel); nothing connects until used."""
    if not settings.sentinels:
        return None
    options = sentinel_options(settings, sentinel_password(settings))
    return Sentinel(settings.sentinels, sentinel_kwargs=options)


def connect(
    settings: StateSettings, password: str | None, timeout: float, sentinel: Sentinel | None
) -> Redis:
    """A client (its own connection pool; nothing is connected until first used): of the URL,
    or of whichever server the sentinels name primary when it connects."""
    options = client_options(settings, password, timeout)
    retry = Retry(NoBackoff(), 0)
    if sentinel is None:
        assert settings.url is not None  # config.load refuses backend redis without either
        return Redis.from_url(settings.url, retry=retry, **options)
    assert settings.service is not None  # config.load refuses addresses without it
    client: Redis = sentinel.master_for(settings.service, retry=retry, **options)
    return client


def primary(client: Redis) -> str | None:
    """The primary a Sentinel client last connected to (None without Sentinel)."""
    address = getattr(client.connection_pool, "master_address", None)
    return f"{address[0]}:{address[1]}" if address else None


@dataclass(frozen=True)
class _LetGo:
    """A login attempt no longer under way: sent after what was published before it."""

    name: bytes
    attempt: bytes


class RedisStore:
    """This machine's `LocalStore`, plus Redis for every other replica."""

    def __init__(
        self,
        settings: StateSettings,
        local: LocalStore,
        origin: bytes,
        retention: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        password = redis_password(settings)
        self._settings = settings
        self._where = settings.where
        self._local = local
        self._origin = origin
        self._retention = retention
        self._clock = clock
        self.keys = Keys(settings.key_prefix)
        self._sentinel = sentinels(settings)
        self.client = connect(settings, password, settings.timeout, self._sentinel)
        # With Sentinel each batch ends with a WAIT that may hold the reply for half the
        # command timeout (always, while no replica is up): the reply then still has the
        # whole command timeout, so a busy loop reading it late is not taken for Redis away.
        self._wait_ms = max(1, round(settings.timeout * 500))
        self._writer, self._write_timeout = self.client, settings.timeout
        if self._sentinel is not None:
            self._write_timeout += self._wait_ms / 1000
            self._writer = connect(settings, password, self._write_timeout, self._sentinel)
        # A blocked XREAD answers after BLOCK_MS; a busy loop may take a while to read it.
        reader_timeout = BLOCK_MS / 1000 + max(2.0, settings.timeout)
        self._reader = connect(settings, password, reader_timeout, self._sentinel)
        self._backoff_cap = SENTINEL_BACKOFF_CAP if self._sentinel else BACKOFF_CAP
        self._replicated = True  # with Sentinel: whether a replica confirmed the last batch
        self._release = self.client.register_script(RELEASE)
        self._reserve = self.client.register_script(RESERVE)
        self._subscribers: list[Subscriber] = []
        self._outbox: deque[tuple[Event | _LetGo, float]] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # set while everything published has been sent
        self._written.set()
        self._healthy = False
        self._outage_logged = False
        self._started_ms: int | None = None  # Redis's clock when this process first connected
        self._offset_ms = 0.0  # Redis's clock minus ours
        self._last_id = b"0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._shared: dict[str, SharedMap] = {}
        self._closing = False  # redis-py may turn a cancellation into a ConnectionError
        self._counts = SharedCounts(self._send_counts)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def publish(self, event: Event) -> None:
        self._local.publish(event)
        self._send_later(event)

    def _send_later(self, item: Event | _LetGo) -> None:
        self._written.clear()
        self._outbox.append((item, self._clock()))
        if len(self._outbox) > OUTBOX:
            self._outbox.popleft()
            self._dropped += 1
        self._wake.set()

    async def reserve(self, key: str, attempt: bytes, hold: float) -> tuple[int, Release]:
        """In Redis, with the stream read up to now in the same round trip; this machine's
        count alone while Redis is away (or does not answer in `state.timeout`)."""
        if not self._healthy:
            return await self._local.reserve(key, attempt, hold)
        name = self.keys.attempts(key)
        try:
            async with asyncio.timeout(self._settings.timeout):
                pipe = self.client.pipeline(transaction=False)
                await self._reserve(keys=[name], args=[attempt, round(hold * 1000)], client=pipe)
                pipe.xread({self.keys.events: self._last_id}, count=READ_BATCH)
                count, reply = await pipe.execute()
        except (*DOWN, TimeoutError) as exc:
            log.warning("state store %s: counting a login attempt here alone: %r", self._where, exc)
            return await self._local.reserve(key, attempt, hold)
        for _stream, entries in reply or ():
            self._deliver(entries)
        self._local.sync()
        return int(count), lambda: self._send_later(_LetGo(name, attempt))

    def tell_workers(self, event: Event) -> None:
        self._local.tell_workers(event)  # derived from a credential: never into Redis

    def used(self, key: str, expires: int) -> int:
        return self._counts.used(key, expires)

    def count(self, key: str, expires: int, amount: int) -> None:
        self._counts.count(key, expires, amount)

    async def _send_counts(self, counts: Sequence[Count]) -> list[int]:
        """INCRBY each window key (kept a minute past its window), in one round trip: the
        totals over every replica. Redis away: StoreUnavailable, and each worker counts alone
        (every worker, also of one machine, is a sharer of its own here)."""
        if not self._healthy:
            raise StoreUnavailable("rate limit counts")
        pipe = self.client.pipeline(transaction=False)
        for count in counts:
            key = self.keys.rate(count.key, count.expires)
            pipe.incrby(key, count.amount)
            pipe.expireat(key, count.expires + RATE_KEPT)
        try:
            async with asyncio.timeout(self._settings.timeout):
                replies = await pipe.execute()
        except DOWN as exc:
            self._unhealthy(exc)
            raise
        return [int(total) for total in replies[::2]]

    def subscribe(self, subscriber: Subscriber) -> None:
        self._local.subscribe(subscriber)
        self._subscribers.append(subscriber)

    def sync(self) -> None:
        self._local.sync()  # what arrives from Redis is applied as it arrives

    async def flush(self) -> None:
        if not self._healthy or self._written.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._write_timeout):
                await self._written.wait()

    async def start(self) -> None:
        """Connect and replay the history, for at most a few seconds: a replica starts even
        while Redis is away (with local state, degraded, catching up when it is back)."""
        await self._local.start()
        try:
            async with asyncio.timeout(CATCH_UP):
                await self._connect()
                while await self._read(block=False) == READ_BATCH:
                    pass
        except (*DOWN, TimeoutError) as exc:
            self._unhealthy(exc)
        self._tasks = [
            asyncio.ensure_future(self._follow()),
            asyncio.ensure_future(self._write()),
        ]
        self._counts.start()

    def shared_map(self, name: str) -> SharedMap:
        from .shared import SharedMap  # it reads Redis as this module does (DOWN)

        if name not in self._shared:
            self._shared[name] = SharedMap(self.client, self.keys, name)
        return self._shared[name]

    async def close(self) -> None:
        await self._counts.close()
        self._closing = True
        for shared in self._shared.values():
            await shared.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._healthy and self._outbox:  # a graceful stop still tells the others
            with contextlib.suppress(*DOWN, TimeoutError):
                async with asyncio.timeout(self._write_timeout):
                    await self._send(list(self._outbox))
        await self.client.aclose()
        if self._writer is not self.client:
            await self._writer.aclose()
        await self._reader.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()
        await self._local.close()

    # --- reading ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Measure Redis's clock; the first time, load the known-good pairs and start the
        stream `retention()` seconds back; later, go on where the stream was left (or where
        it now ends, if that is before)."""
        seconds, micros = await self._reader.time()
        now_ms = seconds * 1000 + micros // 1000
        # Idle connections may be to a Redis that has restarted (or been replaced by a promoted
        # replica) since: drop them, not a write.
        await self.client.connection_pool.disconnect(inuse_connections=False)
        if self._writer is not self.client:
            await self._writer.connection_pool.disconnect(inuse_connections=False)
        self._offset_ms = now_ms - time.time() * 1000
        if self._started_ms is None:
            pairs = await self._reader.zrevrange(
                self.keys.known_good, 0, KNOWN_GOOD_KEPT - 1, withscores=True
            )
            self._deliver_known_good(cast(list[tuple[bytes, float]], pairs), now_ms)
            self._started_ms = now_ms
            self._last_id = start_id(now_ms, self._retention())
        else:
            newest: Any = await self._reader.xrevrange(self.keys.events, count=1)
            self._last_id = resume_id(self._last_id, newest[0][0] if newest else None)
        self._healthy_again()

    def _deliver_known_good(self, pairs: Iterable[tuple[bytes, float]], now_ms: int) -> None:
        for member, score in reversed(list(pairs)):  # oldest first, as they happened
            event = decode(member)
            if isinstance(event, LoginSucceeded):
                self._hand_over(event, (now_ms - score) / 1000)

    async def _read(self, block: bool) -> int:
        """One XREAD from where the stream was left; how many entries came."""
        reply: Any = await self._reader.xread(
            {self.keys.events: self._last_id}, count=READ_BATCH, block=BLOCK_MS if block else None
        )
        count = 0
        for _stream, entries in reply or ():
            self._deliver(entries)
            count += len(entries)
        return count

    def _deliver(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        now_ms = self._now_ms()
        for entry_id, fields in entries:
            if not after(entry_id, self._last_id):
                continue  # read already (a login attempt read the stream meanwhile)
            self._last_id = entry_id
            read = read_entry(entry_id, fields)
            if read is None:
                continue
            ours = read.origin == self._origin
            if ours and read.written_ms >= (self._started_ms or 0):
                continue  # this replica's workers had it through the mesh
            self._hand_over(read.event, max(0.0, (now_ms - read.happened_ms) / 1000))

    def _hand_over(self, event: Event, age: float) -> None:
        for subscriber in self._subscribers:
            subscriber(event, age)

    async def _follow(self) -> None:
        """Follow the stream forever, reconnecting with backoff."""
        attempt = 0
        while not self._closing:
            try:
                if not self._healthy:
                    await self._connect()
                    attempt = 0
                await self._read(block=True)
            except DOWN as exc:
                if self._closing:
                    return
                self._unhealthy(exc)
                await asyncio.sleep(backoff(attempt, random.random(), self._backoff_cap))
                attempt += 1

    # --- writing ----------------------------------------------------------------------------

    async def _write(self) -> None:
        """Send what was published, in one pipeline per wake-up; keep it while Redis is away."""
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self._healthy or not self._outbox:
                continue
            batch, self._outbox = self._outbox, deque()
            try:
                await self._send(batch)
            except BaseException as exc:  # kept for the next try, or for close()
                self._outbox.extendleft(reversed(batch))
                while len(self._outbox) > OUTBOX:
                    self._outbox.popleft()
                    self._dropped += 1
                if self._closing or not isinstance(exc, DOWN):
                    raise
                self._unhealthy(exc)
                continue
            if not self._outbox:
                self._written.set()

    async def _send(self, batch: Iterable[tuple[Event | _LetGo, float]]) -> None:
        now_ms = self._now_ms()
        oldest = start_id(now_ms, self._retention())
        pipe = self._writer.pipeline(transaction=False)
        for event, at in batch:
            if isinstance(event, _LetGo):
                pipe.zrem(event.name, event.attempt)
                continue
            fields: Any = entry(self._origin, event, self._clock() - at)
            pipe.xadd(self.keys.events, fields, minid=oldest, approximate=True)
            if isinstance(event, LoginSucceeded):
                pipe.zadd(self.keys.known_good, {encode(event): now_ms})
                pipe.zremrangebyrank(self.keys.known_good, 0, -KNOWN_GOOD_KEPT - 1)
        if self._sentinel is not None:
            pipe.wait(1, self._wait_ms)
        replies = await pipe.execute()
        if self._sentinel is not None:
            self._confirmed(int(replies[-1]) > 0)

    def _confirmed(self, replicated: bool) -> None:
        """Note whether a replica has what was just written; say so when that changes."""
        if replicated != self._replicated:
            self._replicated = replicated
            if replicated:
                log.warning("state store %s: a replica confirms writes again", self._where)
            else:
                log.warning(
                    "state store %s: no replica confirmed a write within %ss: what is written "
                    "until one does is on the primary only, and lost if it fails now",
                    self._where,
                    self._wait_ms / 1000,
                )

    # --- health -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return round(time.time() * 1000 + self._offset_ms)

    def _unhealthy(self, exc: BaseException) -> None:
        self._healthy = False
        metrics.RECORD.store_up(False)
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "state store %s unreachable (%s): throttle counts, known-good addresses and "
                "cache invalidations stay on this replica, locks are refused; reconnecting",
                self._where,
                exc or type(exc).__name__,
            )

    def _healthy_again(self) -> None:
        self._healthy = True
        metrics.RECORD.store_up(True)
        if self._outage_logged:
            self._outage_logged = False
            dropped, self._dropped = self._dropped, 0
            address = primary(self._reader)
            log.warning(
                "state store %s reachable again%s: sharing with the other replicas "
                "(%d events waiting, %d dropped)",
                self._where,
                f" (primary {address})" if address else "",
                len(self._outbox),
                dropped,
            )
        self._wake.set()  # flush what waited

    # --- locks ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, name: str, ttl: float, wait: float) -> AsyncIterator[None]:
        if not self._healthy:
            raise StoreUnavailable(name)
        key, token = self.keys.lock(name), secrets.token_hex(16)
        await self._acquire(key, token, name, ttl, wait)
        try:
            yield
        finally:
            with contextlib.suppress(*DOWN):  # unreleased, it expires after ttl
                await self._release(keys=[key], args=[token])

    async def _acquire(self, key: bytes, token: str, name: str, ttl: float, wait: float) -> None:
        deadline = self._clock() + wait
        delay = LOCK_POLL_FIRST
        while True:
            try:
                if await self.client.set(key, token, nx=True, px=max(1, round(ttl * 1000))):
                    return
            except DOWN as exc:
                self._unhealthy(exc)
                raise StoreUnavailable(name) from None
            if self._clock() + delay > deadline:
                raise LockTimeout(name)
            await asyncio.sleep(delay)
            delay = min(LOCK_POLL_CAP, delay * 2)
