"""Authentication backends: interchangeable parts behind one Protocol.

The contract, as in docker_auth: `BackendUnavailable` only when a backend could not service the
request, never to deny; `NO_SUCH_USER` asks the next backend, `WRONG_PASSWORD` stops the chain,
and the end of the chain denies. A backend that keeps passwords spends on an unknown user the
hash a known one's wrong password costs (a decoy), so the time taken does not say who exists.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..policy.identity import NO_CLAIMS, RobotGrant


class Outcome(enum.Enum):
    OK = "ok"
    WRONG_PASSWORD = "wrong-password"
    NO_SUCH_USER = "no-such-user"


@dataclass(frozen=True)
class AuthResult:
    """A backend's answer (token backends name the caller themselves, in `user`)."""

    outcome: Outcome
    groups: frozenset[str] = frozenset()
    user: str | None = None  # None: the name the client sent
    claims: Mapping[str, Any] = field(default_factory=lambda: NO_CLAIMS)
    robot: RobotGrant | None = None
    reason: str = ""  # why a token was refused (logged, and the 401's message)
    upstream: str | None = None  # the user's own registry, when the backend keeps one
    issuer: str | None = None  # the trusted issuer of a workload token
    expires: float | None = None  # epoch seconds the credential ends (robots, tokens)


class BackendUnavailable(Exception):
    """The backend could not answer (down, timed out): never a silent allow or fall-through."""


class Authenticator(Protocol):
    """One backend, built at reload and held by a snapshot; closed once no snapshot holds it."""

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        """Check one user's password; see the module docstring for the contract. `proven`:
        the chain accepted these very credentials lately, so an unknown user needs no decoy
        hash (a backend that hashes one to hide who exists may skip it)."""
        ...

    def close(self) -> None:
        """Release connections and threads; later checks raise BackendUnavailable."""
        ...


class TokenAuthenticator(Authenticator, Protocol):
    """A backend that also takes a bare token (`Authorization: Bearer`)."""

    async def authenticate_token(self, token: str) -> AuthResult:
        """Check a token; the same contract as `authenticate`."""
        ...

    def takes(self, password: str) -> bool:
        """Whether a Basic password is a token this backend keeps (never handed on)."""
        ...


def fingerprint(key: bytes, secret: bytes) -> bytes:
    """A keyed hash of a secret, for caches that must not hold passwords."""
    # Keyed BLAKE2b is a MAC in one C call; hmac's Python layers cost more than the lookup.
    return hashlib.blake2b(secret, key=key, digest_size=32).digest()
