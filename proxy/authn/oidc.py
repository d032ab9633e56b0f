"""Workload identity: an OIDC token (GitHub Actions, GitLab CI, a Kubernetes service account)
as the Basic password or as `Authorization: Bearer`.

A password with a JWT's shape is this backend's and never reaches a password backend. Its
claims are checked before its signature, then the issuer's `required` conditions; the name and
groups come from the claims. A token that passed is remembered until it expires.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..policy import claims as claim_values
from . import AuthResult, Outcome, fingerprint
from .cache import VerifiedCache
from .jwks import KeySource
from .jwt import Parsed, Rejected, check_claims, looks_like_jwt, parse, verify_signature
from .oidc_settings import IssuerSettings, OidcSettings
from .robotfile import USER_PREFIX

log = logging.getLogger("regproxy.authn.oidc")


@dataclass(frozen=True)
class Verified:
    """A token whose claims and signature passed; `expires` is its `exp` (epoch seconds)."""

    claims: Mapping[str, Any]
    expires: float


class IssuerVerifier:
    """Checks one issuer's tokens; outlives snapshots while its settings stay the same."""

    def __init__(
        self,
        issuer: str,
        audiences: tuple[str, ...],
        skew: float,
        keys: KeySource,
        cache: tuple[float, int],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`cache`: how long and how many verified tokens are remembered (never past `exp`)."""
        self.issuer, self.audiences, self.skew, self.keys = issuer, audiences, skew, keys
        self._wall = wall
        self._key = secrets.token_bytes(32)
        self._cache: VerifiedCache[Verified] = VerifiedCache(*cache, clock)

    async def verify(self, token: Parsed) -> Verified:
        """The verified token; Rejected, or BackendUnavailable without keys to check it."""
        secret = token.text.encode()
        return await self._cache.check(
            fingerprint(self._key, secret),
            secret,
            lambda: self._verify(token),
            keep=lambda _: True,
            lifetime=lambda verified: verified.expires - self._wall(),
        )

    async def _verify(self, token: Parsed) -> Verified:
        expires = check_claims(token.claims, self.issuer, self.audiences, self._wall(), self.skew)
        keys = await self.keys.keys_for(token.kid, token.algorithm)
        if not keys:
            raise Rejected("token signed by a key the issuer does not publish")
        if not verify_signature(token, keys):
            raise Rejected("token signature does not verify")
        return Verified(token.claims, expires)


def identity_from(issuer: IssuerSettings, claims: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    """The name and groups a verified token's claims give; Rejected when they give none."""
    unmet = claim_values.unmet(issuer.required, claims)
    if unmet is not None:
        raise Rejected(f"token claim {unmet} does not meet the issuer's requirements")
    name = claim_values.render(issuer.user, claims)
    if name is None:
        raise Rejected("token claims do not make a user name (user template)")
    # No name a password backend (htpasswd, LDAP, Redis) can log in with holds a colon: Basic
    # credentials end a user name at the first one. So a name with one is never a user's.
    if ":" not in name:
        raise Rejected(f"token user name {name!r} has no prefix like 'ci:' (it could be a user's)")
    if name.startswith(USER_PREFIX):  # it would act as that robot's principal, unscoped
        raise Rejected(f"token user name {name!r} is a robot's")
    groups = frozenset(
        group
        for claim, prefix in issuer.groups
        for value in claim_values.texts(claims, claim)
        if value and value.isprintable() and not any(c.isspace() for c in value)
        and ":" in (group := prefix + value)  # never the name of a group file's group
    )  # fmt: skip
    return name, groups


class OidcAuthenticator:
    """The workload-token backend of one snapshot (`proxy.authn.Authenticator`)."""

    def __init__(self, settings: OidcSettings, verifiers: Mapping[str, IssuerVerifier]) -> None:
        self.settings = settings
        self._verifiers = verifiers  # by issuer

    def takes(self, password: str) -> bool:
        return looks_like_jwt(password)

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        if not self.takes(password):
            return AuthResult(Outcome.NO_SUCH_USER)
        basic_user = self.settings.basic_user
        if basic_user is not None and user != basic_user:
            reason = f"tokens are accepted with the user name {basic_user!r} only"
            return AuthResult(Outcome.WRONG_PASSWORD, reason=reason)
        return await self.authenticate_token(password)

    async def authenticate_token(self, token: str) -> AuthResult:
        """A token sent as `Authorization: Bearer`, or as a Basic password."""
        try:
            parsed = parse(token)
            issuer = self.settings.issuer(str(parsed.claims.get("iss")))
            if issuer is None:
                raise Rejected("token issuer not trusted")
            verified = await self._verifiers[issuer.issuer].verify(parsed)
            name, groups = identity_from(issuer, verified.claims)
        except Rejected as exc:
            log.info("workload token refused: %s", exc)
            return AuthResult(Outcome.WRONG_PASSWORD, reason=str(exc))
        return AuthResult(
            Outcome.OK,
            groups,
            user=name,
            claims=verified.claims,
            issuer=issuer.issuer,
            expires=verified.expires,
        )

    def close(self) -> None:
        """Nothing of its own: the key sources and verifiers outlive snapshots."""
