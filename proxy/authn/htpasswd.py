"""The htpasswd + group file backend, with a verified-credential cache.

Apache and nginx run bcrypt on every request; a registry client sends the same credentials on
every one of hundreds of requests, so a successful verification is remembered (keyed by the
stored hash, so a password change or removal invalidates it at once). The cache holds a keyed
hash of the password under a per-process random key, never the password. Slow hashes run in a thread
pool, and concurrent checks of the same credentials share one computation.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..credentials import DEFAULT_DUMMY_SAMPLE, Htpasswd, PasswordHash, dummy_like, groups_of
from . import AuthResult, Outcome, fingerprint

CACHE_SIZE = 10_000
CACHE_TTL = 300.0  # seconds a verified password stays trusted without re-hashing


@dataclass(frozen=True)
class UserFiles:
    """One consistent view of the htpasswd and group files, swapped whole on reload."""

    htpasswd: Htpasswd
    groups: dict[str, frozenset[str]]
    dummy: PasswordHash = field(repr=False)

    @classmethod
    def build(
        cls,
        htpasswd: Htpasswd,
        groups: dict[str, frozenset[str]],
        reuse: PasswordHash | None = None,
    ) -> UserFiles:
        """`reuse`: the previous dummy, kept when the typical scheme and cost are the same, so
        a reload does not compute a slow hash on the event loop."""
        typical = htpasswd.typical_hash() or DEFAULT_DUMMY_SAMPLE
        if reuse is not None and (reuse.scheme, reuse.cost) == (typical.scheme, typical.cost):
            return cls(htpasswd, groups, reuse)
        return cls(htpasswd, groups, dummy_like(typical))


class HtpasswdAuthenticator:
    """Authenticator over the current `UserFiles` (read through `files()` on every call)."""

    def __init__(self, files: Callable[[], UserFiles], executor: ThreadPoolExecutor) -> None:
        self._files = files
        self._executor = executor
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()
        self._inflight: dict[tuple[str, bytes], asyncio.Future[bool]] = {}

    async def authenticate(self, user: str, password: str) -> AuthResult:
        files = self._files()
        stored = files.htpasswd.users.get(user)
        secret = password.encode("utf-8", "surrogateescape")
        if stored is None:
            # Same work as a wrong password, so timing does not reveal which users exist.
            await self._verify(user, files.dummy, secret)
            return AuthResult(Outcome.NO_SUCH_USER)
        if not await self._verify(user, stored, secret):
            return AuthResult(Outcome.WRONG_PASSWORD)
        return AuthResult(Outcome.OK, groups_of(files.groups, user))

    async def _verify(self, user: str, stored: PasswordHash, secret: bytes) -> bool:
        tag = fingerprint(self._key, secret)
        key = (user, stored.value)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now and hmac.compare_digest(cached[0], tag):
            return True
        flight_key = (stored.value, tag)
        future = self._inflight.get(flight_key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = asyncio.ensure_future(
                loop.run_in_executor(self._executor, stored.verify, secret)
            )
            self._inflight[flight_key] = future
            future.add_done_callback(lambda _: self._inflight.pop(flight_key, None))
        ok = await asyncio.shield(future)
        if ok:
            self._remember(key, tag, now)
        return ok

    def _remember(self, key: tuple[str, str], tag: bytes, now: float) -> None:
        self._cache[key] = (tag, now + CACHE_TTL)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
