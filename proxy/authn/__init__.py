"""Authentication backends: interchangeable parts behind one Protocol.

The contract, as in docker_auth: a backend raises `BackendUnavailable` only if it could not
service the request, never to deny. It answers `NO_SUCH_USER` when the user is not its own (the
next backend is asked) and `WRONG_PASSWORD` when it is but the password is wrong (the chain
stops). The end of the chain denies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Outcome(enum.Enum):
    OK = "ok"
    WRONG_PASSWORD = "wrong-password"
    NO_SUCH_USER = "no-such-user"


@dataclass(frozen=True)
class AuthResult:
    outcome: Outcome
    groups: frozenset[str] = frozenset()


class BackendUnavailable(Exception):
    """The backend could not answer (down, timed out): never a silent allow or fall-through."""


class Authenticator(Protocol):
    async def authenticate(self, user: str, password: str) -> AuthResult:
        """Check one user's password; see the module docstring for the contract."""
        ...
