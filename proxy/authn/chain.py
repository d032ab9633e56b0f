"""The authentication step: Basic header -> throttle check -> backends in order -> Identity.

Backends are asked in order: `NO_SUCH_USER` passes to the next one, `WRONG_PASSWORD` stops
the chain, and a backend that cannot answer makes the request fail with 503 (never a silent
allow, never a fall-through to a weaker backend). Failures feed the brute-force throttle.

What a request authenticates against (`Authenticators`: the backends, the group file, the
throttle settings) belongs to one configuration snapshot and is passed in with the request;
`BackendFactory` builds it at reload, off the event loop, reusing what has not changed.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import metrics
from ..addresses import IPAddress
from ..credentials import MalformedCredentials, PasswordHash, parse_basic_auth
from ..identity import Identity
from ..throttle import Throttle, ThrottleSettings
from . import Authenticator, BackendUnavailable, Outcome, fingerprint
from .cache import CacheSettings, VerifiedCache
from .htpasswd import HtpasswdAuthenticator, UserFiles

if TYPE_CHECKING:
    from .ldap_settings import LdapSettings
    from .redis_users import RedisUsers

log = logging.getLogger("regproxy.authn")


@dataclass(frozen=True)
class Denied:
    """Why a request has no identity: 400 malformed, 401 wrong, 429 throttled, 503 down."""

    status: int
    message: str
    retry_after: int | None = None


@dataclass(frozen=True)
class Authenticators:
    """One snapshot's way of authenticating: backends in order, the group file (which adds
    groups to any backend's users), the throttle settings."""

    backends: tuple[Authenticator, ...]
    users: UserFiles
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)


class Authentication:
    """Turns an Authorization header into an Identity, or a Denied answer. `flush`: waits
    until a failure has reached the other processes (`Store.flush`), before the 401."""

    def __init__(
        self,
        throttle: Throttle,
        clock: Callable[[], float] = time.monotonic,
        flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.throttle = throttle
        self._clock = clock
        self._flush = flush
        self._key = secrets.token_bytes(32)  # tells attempts apart without keeping passwords

    async def identify(
        self, authorization: list[str], address: IPAddress | None, setup: Authenticators
    ) -> Identity | Denied:
        try:
            credentials = parse_basic_auth(authorization)
        except MalformedCredentials as exc:
            metrics.RECORD.auth_failure("malformed")
            return Denied(400, str(exc))
        if credentials is None:
            return Identity(None, address=address)
        user, password = credentials
        where = str(address) if address else "unknown"
        wait = self.throttle.retry_after(user, where, self._clock(), setup.throttle)
        if wait > 0:
            log.warning("throttled login for %r from %s: retry in %.0fs", user, where, wait)
            metrics.RECORD.throttled()
            return Denied(429, "too many failed logins, retry later", math.ceil(wait))
        attempt = fingerprint(self._key, f"{user}:{password}".encode(errors="surrogateescape"))
        self.throttle.started(user, where, attempt)
        try:
            for backend in setup.backends:
                result = await backend.authenticate(user, password)
                if result.outcome is Outcome.OK:
                    self.throttle.success(user, where)
                    groups = result.groups | setup.users.groups_of(user)
                    return Identity(user, groups, address, result.upstream)
                if result.outcome is Outcome.WRONG_PASSWORD:
                    break
        except BackendUnavailable as exc:
            log.error("authentication backend unavailable: %s", exc)
            metrics.RECORD.auth_failure("backend_unavailable")
            return Denied(503, "authentication backend unavailable")
        finally:
            self.throttle.finished(user, where, attempt)
        self.throttle.failure(user, where, self._clock(), setup.throttle)
        if self._flush is not None:
            await self._flush()
        metrics.RECORD.auth_failure("invalid")
        log.info("authentication failed for %r from %s", user, where)
        return Denied(401, "invalid username or password")


class BackendFactory:
    """Builds each snapshot's backends (at reload, in a worker thread). Owns what outlives
    snapshots: the hashing thread pool and the verified-credential cache of the backends that
    keep hashes (htpasswd, Redis); an LDAP backend is reused while its settings are unchanged.
    `redis_users`: the worker's view of the users in Redis (with `state.backend: redis`)."""

    def __init__(
        self,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        redis_users: RedisUsers | None = None,
    ) -> None:
        self._executor = executor
        self._clock = clock
        self._redis_users = redis_users
        self._redis_dummy: PasswordHash | None = None
        self._verified: VerifiedCache[bool] = VerifiedCache(
            CacheSettings.ttl, CacheSettings.size, clock
        )

    def build(
        self,
        names: tuple[str, ...],
        users: UserFiles,
        ldap: LdapSettings | None,
        cache: CacheSettings,
        previous: tuple[Authenticator, ...] = (),
    ) -> tuple[Authenticator, ...]:
        self._verified.ttl, self._verified.size = cache.ttl, cache.size
        built: list[Authenticator] = []
        for name in names:
            if name == "htpasswd":
                built.append(HtpasswdAuthenticator(users, self._verified, self._executor))
            elif name == "redis":
                built.append(self._redis())
            else:
                assert ldap is not None  # config.load refuses ldap without settings
                built.append(self._ldap(ldap, previous))
        return tuple(built)

    def _redis(self) -> Authenticator:
        from .redis_users import RedisAuthenticator, make_dummy

        assert self._redis_users is not None  # config.load refuses redis without state: redis
        if self._redis_dummy is None:
            self._redis_dummy = make_dummy()
        return RedisAuthenticator(
            self._redis_users, self._verified, self._executor, self._redis_dummy
        )

    def _ldap(self, settings: LdapSettings, previous: tuple[Authenticator, ...]) -> Authenticator:
        from .ldap import LdapAuthenticator  # imports ldap3: only when configured

        for backend in previous:
            if isinstance(backend, LdapAuthenticator) and backend.settings == settings:
                return backend
        return LdapAuthenticator(settings, self._clock)
