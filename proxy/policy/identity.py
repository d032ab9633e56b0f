"""Who is asking: the answer of the authentication step, read by authorization, forwarding and
the logs. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from ..core.addresses import IPAddress
from ..http.routes import Action

NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class RobotGrant:
    """What a robot may do: the intersection of its own scopes and the rights it borrows."""

    name: str
    owner: str | None
    principal: str  # whose rights it borrows: its owner, or the robot itself without one
    principal_groups: frozenset[str]
    repositories: tuple[str, ...]
    actions: frozenset[Action]

    def acting(self, address: IPAddress | None) -> Identity:
        """The identity whose ACL rights bound the robot's, asking from the same address."""
        return Identity(self.principal, self.principal_groups, address)


@dataclass(frozen=True)
class Identity:
    """Who is asking and from where."""

    user: str | None  # None for a request without credentials
    groups: frozenset[str] = frozenset()
    address: IPAddress | None = None
    # A workload token's verified claims, and its trusted issuer.
    claims: Mapping[str, Any] = field(default_factory=lambda: NO_CLAIMS, compare=False)
    robot: RobotGrant | None = None
    upstream: str | None = None  # the user's own registry, when their backend names one
    issuer: str | None = None
    expires: float | None = None  # when the credential ends (a robot's, a workload token's)

    @property
    def anonymous(self) -> bool:
        return self.user is None


# Every request without credentials has one: made once per address, not per request (an
# identity is frozen, so one can serve them all).
@lru_cache(maxsize=1024)
def anonymous(address: IPAddress | None) -> Identity:
    """The identity of a request without credentials from `address`."""
    return Identity(None, address=address)
