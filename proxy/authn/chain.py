"""The authentication step: Basic (or Bearer) header -> throttle check -> backends in order ->
Identity; and `BackendFactory`, which builds each snapshot's backends.

A backend that cannot answer fails the request with 503: never an allow, never a fall-through
to a weaker backend. Token backends come first, so a robot's secret or a CI token never
reaches a password backend.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from ..core.addresses import IPAddress, throttle_key
from ..core.lru import LRU
from ..observe import metrics
from ..policy.identity import Identity, anonymous
from ..state.events import CredentialChecking, CredentialVerified, Event
from ..state.store import Release, Store
from . import (
    Authenticator,
    AuthResult,
    BackendUnavailable,
    Outcome,
    TokenAuthenticator,
    fingerprint,
)
from .cache import CacheSettings, VerifiedCache
from .credentials import MalformedCredentials, PasswordHash, bearer_token, parse_basic_auth
from .htpasswd import HtpasswdAuthenticator, UserFiles
from .robotfile import Robot
from .robots import RobotAuthenticator, RobotUsage
from .throttle import Throttle, ThrottleSettings, pair, token_login

if TYPE_CHECKING:
    from .jwks import KeySource
    from .ldap_settings import LdapSettings
    from .oidc import IssuerVerifier
    from .oidc_settings import OidcSettings
    from .redis_users import RedisUsers

BEARER = "(bearer)"  # who a Bearer token's failures are counted against, with the address
ATTEMPT_HOLD = 60.0  # seconds a login attempt counts as under way at most (its process died)
LOGGED_IN_KEPT = 10_000  # credentials remembered per worker as having logged in lately

log = logging.getLogger("regproxy.authn")


@dataclass(frozen=True)
class Denied:
    """Why a request has no identity: 400 malformed, 401 wrong, 429 throttled, 503 down."""

    status: int
    message: str
    retry_after: int | None = None


class Credentials(NamedTuple):
    """Credentials an Authorization header carries, to be checked."""

    user: str
    password: str
    token: bool  # a Bearer token (its user is BEARER)


@dataclass(frozen=True)
class AuthSettings:
    """What a snapshot's authentication is built from."""

    backends: tuple[str, ...] = ("htpasswd",)
    ldap: LdapSettings | None = None
    oidc: OidcSettings | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)


@dataclass(frozen=True)
class Authenticators:
    """One snapshot's way of authenticating: backends in order, the group file, the throttle."""

    backends: tuple[Authenticator, ...]
    users: UserFiles
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    bearer: TokenAuthenticator | None = None  # takes `Authorization: Bearer` (OIDC)


class Authentication:
    """Turns an Authorization header into an Identity, or a Denied answer."""

    # `store` counts a login attempt as under way everywhere before its password is checked,
    # so a burst of guesses spread over workers and replicas is held to the throttle's limit
    # as one; credentials verified here lately skip that round trip. `flush` holds the 401
    # until a failure has reached the other processes.

    def __init__(
        self,
        throttle: Throttle,
        clock: Callable[[], float] = time.monotonic,
        flush: Callable[[], Awaitable[None]] | None = None,
        store: Store | None = None,
    ) -> None:
        self.throttle = throttle
        self._clock = clock
        self._store = store
        self._flush = flush if flush is not None or store is None else store.flush
        self._key = secrets.token_bytes(32)  # tells attempts apart without keeping passwords
        self._logged_in: LRU[bytes, float] = LRU(LOGGED_IN_KEPT)  # attempt -> until when

    @staticmethod
    def read(
        authorization: list[str], address: IPAddress | None, setup: Authenticators
    ) -> Identity | Denied | Credentials:
        """What the header says before anything is checked: no credentials (the anonymous
        identity), malformed ones (400), or the credentials `identify` checks."""
        try:
            credentials = parse_basic_auth(authorization)
            token = None
            if credentials is None and setup.bearer is not None:
                token = bearer_token(authorization)
        except MalformedCredentials as exc:
            metrics.RECORD.auth_failure("malformed")
            return Denied(400, str(exc))
        if token is not None:
            return Credentials(BEARER, token, True)
        if credentials is None:
            return anonymous(address)
        return Credentials(*credentials, False)

    async def identify(
        self, authorization: list[str], address: IPAddress | None, setup: Authenticators
    ) -> Identity | Denied:
        read = self.read(authorization, address, setup)
        if not isinstance(read, Credentials):
            return read
        user, password, token = read
        where = throttle_key(address)
        attempt = fingerprint(self._key, f"{user}:{password}".encode(errors="surrogateescape"))
        # A workload token is counted as its own login, not as one shared name: one CI job's
        # expired token must not lock out every other job on its runner. Only what the token
        # backend takes (it never hands it on to a password backend, so this opens no way to
        # guess a password); without one, a token-shaped password is a password like any.
        counted = user
        if token or (setup.bearer is not None and setup.bearer.takes(password)):
            counted = token_login(attempt)
        wait = self.throttle.retry_after(counted, where, self._clock(), setup.throttle)
        if wait > 0:
            return _throttled(user, where, wait)
        release: Release = _nothing
        proven = self._logged_in_lately(attempt)
        if self._store is not None and not proven:
            under_way, release = await self._store.reserve(
                pair(counted, where), attempt, ATTEMPT_HOLD
            )
            # What the others published before is counted now: ask again, with every attempt
            # under way anywhere but this one.
            now = self._clock()
            wait = self.throttle.retry_after(counted, where, now, setup.throttle, under_way - 1)
            if wait > 0:
                release()
                return _throttled(user, where, wait)
        self.throttle.started(counted, where, attempt)
        try:
            answer = await self._ask(setup, user, password, token, proven)
        except BaseException as exc:
            release()
            if not isinstance(exc, BackendUnavailable):
                raise
            log.error("authentication backend unavailable: %s", exc)
            metrics.RECORD.auth_failure("backend_unavailable")
            return Denied(503, "authentication backend unavailable")
        finally:
            self.throttle.finished(counted, where, attempt)
        if answer is not None and answer.outcome is Outcome.OK:
            self.throttle.success(counted, where)
            self._logged_in.put(attempt, self._clock() + setup.throttle.window)
            release()
            return _identity(answer, user, address, setup.users)
        reason = answer.reason if answer is not None else ""
        if proven:  # refused now: no longer spared the decoy, nor the store's round trip
            self._logged_in.pop(attempt)
        self.throttle.failure(counted, where, self._clock(), setup.throttle)
        release()  # after the failure is published: who counts after this counts the failure
        if self._flush is not None:
            await self._flush()
        metrics.RECORD.auth_failure("invalid")
        log.info("authentication failed for %r from %s", user, where)
        return Denied(401, reason or "invalid username or password")

    def _logged_in_lately(self, attempt: bytes) -> bool:
        until = self._logged_in.get(attempt)
        return until is not None and until > self._clock()

    @staticmethod
    async def _ask(
        setup: Authenticators, user: str, password: str, bearer: bool, proven: bool
    ) -> AuthResult | None:
        """The answer that ends the chain (OK or WRONG_PASSWORD); None when every one passed.
        `proven`: these credentials passed lately, so the backends before the one that takes
        them spend no decoy hash on a user they do not have (an LDAP or Redis user's every
        request would pay a bcrypt in the htpasswd backend before it)."""
        if bearer:
            assert setup.bearer is not None
            answer = await setup.bearer.authenticate_token(password)
            return answer if answer.outcome is not Outcome.NO_SUCH_USER else None
        for backend in setup.backends:
            answer = await backend.authenticate(user, password, proven)
            if answer.outcome is not Outcome.NO_SUCH_USER:
                return answer
        return None


def _throttled(user: str, where: str, wait: float) -> Denied:
    log.warning("throttled login for %r from %s: retry in %.0fs", user, where, wait)
    metrics.RECORD.throttled()
    return Denied(429, "too many failed logins, retry later", math.ceil(wait))


def _nothing() -> None:
    """No attempt was counted in the store: nothing to let go of."""


def _identity(
    result: AuthResult, user: str, address: IPAddress | None, users: UserFiles
) -> Identity:
    """The caller as the backend named them; the group file adds groups to any name."""
    name = result.user or user
    return Identity(
        name,
        _union(result.groups, users.groups_of(name)),
        address,
        result.claims,
        result.robot,
        result.upstream,
        result.issuer,
        result.expires,
    )


def _union(some: frozenset[str], more: frozenset[str]) -> frozenset[str]:
    """`some | more`, as one of them when the other adds nothing: an htpasswd user's groups
    stay the group file's own set, whose hash a rule set's kept merges use."""
    if not more or more is some:
        return some
    return some | more if some else more


class BackendFactory:
    """Builds each snapshot's backends (at reload, in a worker thread), and owns what outlives
    snapshots: the hashing pool, the verified-credential cache, robot usage, OIDC issuers'
    keys, LDAP backends while their settings are unchanged."""

    def __init__(
        self,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        credentials_key: bytes | None = None,
        share: Callable[[Event], None] | None = None,
        redis_users: RedisUsers | None = None,
    ) -> None:
        self._executor = executor
        self._clock = clock
        self._wall = wall
        self._share = share
        self._redis_users = redis_users
        self._redis_dummy: PasswordHash | None = None
        self._verified: VerifiedCache[bool] = VerifiedCache(
            CacheSettings.ttl, CacheSettings.size, clock, credentials_key, self._learned,
            self._checking,
        )  # fmt: skip
        self.robot_usage = RobotUsage()
        self._sources: dict[object, KeySource] = {}
        self._verifiers: dict[object, IssuerVerifier] = {}

    def _learned(self, key: Hashable, tag: bytes, seconds: float) -> None:
        """A password this worker verified: the other workers need not hash it again."""
        if self._share is not None:
            self._share(CredentialVerified(str(key), tag.hex(), repr(seconds)))

    def _checking(self, key: Hashable, tag: bytes, ended: bool) -> None:
        """A password this worker starts (or ended) hashing: the others wait for it."""
        if self._share is not None:
            self._share(CredentialChecking(str(key), tag.hex(), "1" if ended else "0"))

    def learn(self, event: Event, age: float = 0.0) -> None:
        """A password another worker verified, or is hashing (a malformed event is ignored)."""
        if isinstance(event, CredentialVerified):
            with contextlib.suppress(ValueError):
                tag, seconds = bytes.fromhex(event.tag), float(event.seconds)
                self._verified.learn(event.key, tag, seconds, True)
        elif isinstance(event, CredentialChecking):
            with contextlib.suppress(ValueError):
                self._verified.noticed(event.key, bytes.fromhex(event.tag), event.ended == "1")

    def authenticators(
        self,
        settings: AuthSettings,
        users: UserFiles,
        robots: tuple[Mapping[str, Robot], bytes] | None = None,
        previous: Authenticators | None = None,
    ) -> Authenticators:
        """One snapshot's way of authenticating: token backends, then the password backends."""
        old = previous.backends if previous else ()
        tokens: list[Authenticator] = []
        if robots is not None:
            book, key = robots
            tokens.append(RobotAuthenticator(book, key, users, self.robot_usage, self._wall))
        bearer = self._oidc(settings.oidc) if settings.oidc is not None else None
        tokens.extend([bearer] if bearer is not None else [])
        passwords = self.build(settings.backends, users, settings.ldap, settings.cache, old)
        return Authenticators((*tokens, *passwords), users, settings.throttle, bearer)

    def build(
        self,
        names: tuple[str, ...],
        users: UserFiles,
        ldap: LdapSettings | None,
        cache: CacheSettings,
        previous: tuple[Authenticator, ...] = (),
    ) -> tuple[Authenticator, ...]:
        """The password backends, in order."""
        self._verified.ttl, self._verified.size = cache.ttl, cache.size
        built: list[Authenticator] = []
        for name in names:
            if name == "htpasswd":
                built.append(HtpasswdAuthenticator(users, self._verified, self._executor))
            elif name == "redis":
                built.append(self._redis())
            else:
                assert ldap is not None  # config.load refuses ldap without settings
                built.append(self._ldap(ldap, cache.size, previous))
        return tuple(built)

    def _redis(self) -> Authenticator:
        from .redis_users import RedisAuthenticator, make_dummy

        assert self._redis_users is not None  # config.load refuses redis without state: redis
        if self._redis_dummy is None:
            self._redis_dummy = make_dummy()
        return RedisAuthenticator(
            self._redis_users, self._verified, self._executor, self._redis_dummy
        )

    def _ldap(
        self, settings: LdapSettings, size: int, previous: tuple[Authenticator, ...]
    ) -> Authenticator:
        from .ldap import LdapAuthenticator  # imports ldap3: only when configured

        for backend in previous:
            if isinstance(backend, LdapAuthenticator) and backend.settings == settings:
                return backend
        return LdapAuthenticator(settings, self._clock, size)

    def _oidc(self, settings: OidcSettings) -> TokenAuthenticator:
        from .jwks import Endpoint, KeySource  # imports joserfc: only when configured
        from .oidc import IssuerVerifier, OidcAuthenticator

        sources: dict[object, KeySource] = {}
        verifiers: dict[object, IssuerVerifier] = {}
        by_issuer: dict[str, IssuerVerifier] = {}
        for issuer in settings.issuers:
            endpoint = Endpoint(
                issuer.issuer,
                issuer.jwks_uri,
                issuer.ca_pem,
                settings.timeout,
                settings.jwks_refresh,
                settings.jwks_min_interval,
                settings.jwks_max_size,
            )
            source = sources[endpoint] = self._sources.get(endpoint) or KeySource(
                endpoint, self._clock
            )
            cache = (settings.token_cache_ttl, settings.token_cache_size)
            checks = (endpoint, issuer.audiences, settings.clock_skew, cache)
            verifier = verifiers[checks] = self._verifiers.get(checks) or IssuerVerifier(
                issuer.issuer,
                issuer.audiences,
                settings.clock_skew,
                source,
                cache,
                self._clock,
                self._wall,
            )
            by_issuer[issuer.issuer] = verifier
        self._sources, self._verifiers = sources, verifiers
        return OidcAuthenticator(settings, by_issuer)
