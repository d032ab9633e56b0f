"""Who is asking: the answer of the authentication step, read by authorization, forwarding and
the logs. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..core.addresses import IPAddress
from ..http.routes import Action

NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class RobotGrant:
    """What a robot may do: its own scopes, and whose rights it borrows (`principal`, with
    `principal_groups`: its owner, or the robot itself when it has none). Authorization grants
    the intersection of the two."""

    name: str
    owner: str | None
    principal: str
    principal_groups: frozenset[str]
    repositories: tuple[str, ...]
    actions: frozenset[Action]

    def acting(self, address: IPAddress | None) -> Identity:
        """The identity whose ACL rights bound the robot's, asking from the same address."""
        return Identity(self.principal, self.principal_groups, address)


@dataclass(frozen=True)
class Identity:
    """Who is asking and from where. `user` is None for a request without credentials.
    `claims` and `issuer`: a workload token's verified claims and its trusted issuer (OIDC);
    `robot`: set for robot tokens; `upstream`: the user's own registry when their backend
    names one (Redis users)."""

    user: str | None
    groups: frozenset[str] = frozenset()
    address: IPAddress | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: NO_CLAIMS, compare=False)
    robot: RobotGrant | None = None
    upstream: str | None = None
    issuer: str | None = None
    expires: float | None = None  # when the credential ends (a robot's, a workload token's)

    @property
    def anonymous(self) -> bool:
        return self.user is None
