"""The authentication step: Basic header -> throttle check -> backends in order -> Identity.

Backends are asked in order: `NO_SUCH_USER` passes to the next one, `WRONG_PASSWORD` stops
the chain, and a backend that cannot answer makes the request fail with 503 (never a silent
allow, never a fall-through to a weaker backend). Failures feed the brute-force throttle.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import metrics
from ..config import Config
from ..credentials import MalformedCredentials, parse_basic_auth
from ..policy import Identity, IPAddress
from ..throttle import Throttle
from . import Authenticator, BackendUnavailable, Outcome, fingerprint

if TYPE_CHECKING:
    from .ldap import LdapAuthenticator
    from .ldap_settings import LdapSettings

log = logging.getLogger("regproxy.authn")


@dataclass(frozen=True)
class Denied:
    """Why a request has no identity: 400 malformed, 401 wrong, 429 throttled, 503 down."""

    status: int
    message: str
    retry_after: int | None = None


class Authentication:
    """Turns an Authorization header into an Identity, or a Denied answer."""

    def __init__(
        self,
        backends: Callable[[], Sequence[Authenticator]],
        throttle: Throttle,
        group_file: Callable[[str], frozenset[str]] = lambda _: frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backends = backends
        self.throttle = throttle
        self._group_file = group_file  # adds to any backend's groups (LDAP users too)
        self._clock = clock
        self._key = secrets.token_bytes(32)  # tells attempts apart without keeping passwords

    async def identify(
        self, authorization: list[str], address: IPAddress | None
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
        wait = self.throttle.retry_after(user, where, self._clock())
        if wait > 0:
            log.warning("throttled login for %r from %s: retry in %.0fs", user, where, wait)
            metrics.RECORD.throttled()
            return Denied(429, "too many failed logins, retry later", math.ceil(wait))
        attempt = fingerprint(self._key, f"{user}:{password}".encode(errors="surrogateescape"))
        self.throttle.started(user, where, attempt)
        try:
            for backend in self._backends():
                result = await backend.authenticate(user, password)
                if result.outcome is Outcome.OK:
                    self.throttle.success(user, where)
                    return Identity(user, result.groups | self._group_file(user), address)
                if result.outcome is Outcome.WRONG_PASSWORD:
                    break
        except BackendUnavailable as exc:
            log.error("authentication backend unavailable: %s", exc)
            metrics.RECORD.auth_failure("backend_unavailable")
            return Denied(503, "authentication backend unavailable")
        finally:
            self.throttle.finished(user, where, attempt)
        self.throttle.failure(user, where, self._clock())
        metrics.RECORD.auth_failure("invalid")
        log.info("authentication failed for %r from %s", user, where)
        return Denied(401, "invalid username or password")


class Backends:
    """The configured backends, in order; the LDAP one is rebuilt when its settings change."""

    def __init__(self, config: Callable[[], Config], htpasswd: Authenticator) -> None:
        self._config = config
        self._htpasswd = htpasswd
        self._ldap: LdapAuthenticator | None = None

    def __call__(self) -> tuple[Authenticator, ...]:
        config = self._config()
        return tuple(
            self._htpasswd if name == "htpasswd" else self._ldap_for(config.ldap)
            for name in config.auth_backends
        )

    def _ldap_for(self, settings: LdapSettings | None) -> Authenticator:
        from .ldap import LdapAuthenticator  # imports ldap3: only when configured

        assert settings is not None  # config.load refuses ldap without settings
        if self._ldap is None or self._ldap.settings != settings:
            self.close()
            self._ldap = LdapAuthenticator(settings)
        return self._ldap

    def close(self) -> None:
        if self._ldap is not None:
            self._ldap.close()
            self._ldap = None
