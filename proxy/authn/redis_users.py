"""Users in Redis (`auth_backends: [..., redis]`, keys in `proxy.state.redis_layout`), as the
ngx_mruby proxy kept them: adding a user is a Redis write, not a file edit on every node.

No round trip on the hot path: each worker keeps the records it read until `users:version`
changes, so a change applies within a second on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from ..core.addresses import parse_upstream
from ..core.chores import every, stop
from ..core.flight import SingleFlight
from ..core.lru import LRU
from ..state.redis_layout import Keys
from ..state.redis_store import DOWN
from . import AuthResult, BackendUnavailable, Outcome
from .cache import VerifiedCache, verify_hash
from .credentials import PasswordHash, dummy_like, identify

log = logging.getLogger("regproxy.authn")

POLL = 0.25  # seconds between reads of users:version
# Records older than this cannot be trusted to be current: every Redis user is refused with
# 503 until Redis answers again, never an allow, never a fall-through.
FRESH = 1.0  # seconds records stay usable after Redis last answered
RECORDS = 10_000  # records remembered per worker at most
DUMMY_SAMPLE = PasswordHash("bcrypt", "$2y$10$" + "." * 53)  # what `regproxy passwd` writes
_GROUP = re.compile(r"[^\s:,]+")


@dataclass(frozen=True)
class UserRecord:
    """One user's hash, read (`password` None: unusable, `problem` says why)."""

    password: PasswordHash | None
    groups: frozenset[str] = frozenset()
    upstream: str | None = None
    problem: str | None = None


def parse_record(fields: Mapping[bytes, bytes]) -> UserRecord | None:
    """A user's hash fields -> the record; None when there is no such user (no fields). Pure."""
    if not fields:
        return None
    try:
        text = {key.decode(): value.decode() for key, value in fields.items()}
    except UnicodeDecodeError:
        return UserRecord(None, problem="a field is not UTF-8")
    stored = identify(text.get("password", "").strip())
    if stored is None:
        return UserRecord(None, problem="no password, or not a hash htpasswd accepts")
    groups = re.split(r"[\s,]+", text.get("groups", "").strip())
    if any(not _GROUP.fullmatch(name) for name in groups if name):
        return UserRecord(None, problem=f"groups {text['groups']!r}: names may not contain ':'")
    upstream = text.get("upstream", "").strip() or None
    if upstream is not None:
        try:
            upstream = parse_upstream(upstream)
        except ValueError as exc:
            return UserRecord(None, problem=f"upstream: {exc}")
    return UserRecord(stored, frozenset(name for name in groups if name), upstream)


class RedisUsers:
    """One worker's view of the users in Redis, forgotten when `users:version` changes."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        clock: Callable[[], float] = time.monotonic,
        reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = client
        self._keys = keys
        self._clock = clock
        self._reachable = reachable  # the store's word: a lost connection is known at once
        self._records: LRU[str, UserRecord | None] = LRU(RECORDS)
        self._generation = 0  # bumped whenever the records are forgotten
        self._version: bytes | None = None
        self._fresh_until = 0.0
        self._fetches: SingleFlight[str, UserRecord | None] = SingleFlight()
        self._first: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    async def record(self, user: str) -> UserRecord | None:
        """The user's record (None: no such user); BackendUnavailable while Redis is away."""
        await self._started()
        if self._clock() >= self._fresh_until or not self._reachable():
            raise BackendUnavailable("Redis is unreachable: cannot check users kept there")
        if user in self._records:
            return self._records.get(user)
        try:
            return await self._fetches.join(user, lambda: self._fetch(user))
        except DOWN as exc:
            raise BackendUnavailable(f"Redis: {exc}") from None

    async def _started(self) -> None:
        """The first lookup starts polling (the backend may be configured later, live)."""
        if self._first is None:
            self._first = asyncio.ensure_future(self._check())
            self._poller = asyncio.ensure_future(every(POLL, self._check))
        await asyncio.shield(self._first)

    async def _fetch(self, user: str) -> UserRecord | None:
        generation = self._generation
        fields = await self._client.hgetall(self._keys.user(user))
        record = parse_record(cast(dict[bytes, bytes], fields))
        if record is not None and record.problem:
            log.warning("Redis user %r refused: %s", user, record.problem)
        if generation == self._generation:  # not read before a change it missed
            self._records.put(user, record)
        return record

    async def _check(self) -> None:
        """Read users:version; a change forgets every record."""
        try:
            version = cast(bytes | None, await self._client.get(self._keys.users_version))
        except DOWN:
            return
        if version != self._version or not self._fresh_until:
            self._version = version
            self._generation += 1
            self._records.clear()
        self._fresh_until = self._clock() + FRESH

    async def close(self) -> None:
        await stop(self._poller, self._first)


class RedisAuthenticator:
    """The `redis` backend of one snapshot, over the worker's long-lived `RedisUsers`."""

    def __init__(
        self,
        users: RedisUsers,
        cache: VerifiedCache[bool],
        executor: Executor,
        dummy: PasswordHash,
    ) -> None:
        self._users = users
        self._cache = cache
        self._executor = executor
        self._dummy = dummy

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        record = await self._users.record(user)
        secret = password.encode("utf-8", "surrogateescape")
        if record is None or record.password is None:
            if not proven:
                await verify_hash(self._cache, self._executor, user, self._dummy, secret)
            return AuthResult(Outcome.NO_SUCH_USER if record is None else Outcome.WRONG_PASSWORD)
        if not await verify_hash(self._cache, self._executor, user, record.password, secret):
            return AuthResult(Outcome.WRONG_PASSWORD)
        return AuthResult(Outcome.OK, record.groups, upstream=record.upstream)

    def close(self) -> None:
        """Nothing of its own: the records, the executor and the cache outlive snapshots."""


def make_dummy() -> PasswordHash:
    """The hash unknown Redis users are checked against."""
    return dummy_like(DUMMY_SAMPLE)
