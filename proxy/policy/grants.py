"""Break-glass grants: rights given to one user for a while, beyond what the ACL gives. Pure.

A grant is asked only when the ACL refuses (`proxy.policy.rules.decide`), so it never narrows
anything, and the guards after authorization hold whatever decided. Robots have no grants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..core.moments import timestamp
from ..http.routes import Action
from .globs import glob_regex


@dataclass(frozen=True)
class Grant:
    """One grant, from `granted` until `expires` (epoch seconds)."""

    id: str
    user: str
    actions: frozenset[Action]
    repositories: tuple[str, ...]
    granted: float
    expires: float
    reason: str
    granted_by: str | None = None
    origin: str = ""  # file:line

    def in_force(self, now: float) -> bool:
        return self.granted <= now < self.expires

    def covers(self, action: Action, repository: str) -> bool:
        return action in self.actions and any(
            glob_regex(glob).fullmatch(repository) for glob in self.repositories
        )

    def record(self) -> dict[str, str | None]:
        """What the audit log says of it."""
        return {
            "id": self.id,
            "reason": self.reason,
            "granted_by": self.granted_by,
            "expires": timestamp(self.expires),
        }


@dataclass(frozen=True)
class Active:
    """The grants as they stand at one moment: what authorization consults."""

    by_user: Mapping[str, tuple[Grant, ...]]
    now: float

    def find(self, user: str | None, action: Action, repository: str) -> Grant | None:
        """The first grant (in file order) in force now that gives `user` this action here."""
        for grant in self.by_user.get(user, ()) if user is not None else ():
            if grant.in_force(self.now) and grant.covers(action, repository):
                return grant
        return None


class Grants(tuple[Grant, ...]):
    """The usable grants of a file, in file order, indexed by user."""

    _by_user: dict[str, tuple[Grant, ...]]

    def __new__(cls, grants: Iterable[Grant]) -> Grants:
        self = super().__new__(cls, grants)
        by_user: dict[str, list[Grant]] = {}
        for grant in self:
            by_user.setdefault(grant.user, []).append(grant)
        self._by_user = {user: tuple(held) for user, held in by_user.items()}
        return self

    def at(self, now: float) -> Active:
        # No grants (most configurations): nothing to make per request.
        return Active(self._by_user, now) if self._by_user else NONE_ACTIVE

    def idle(self, user: str | None, action: Action, repository: str, now: float) -> list[Grant]:
        """The grants that would give `user` this action here, but are not in force now."""
        held = self._by_user.get(user, ()) if user is not None else ()
        return [g for g in held if g.covers(action, repository) and not g.in_force(now)]


NONE_ACTIVE = Active({}, 0.0)
NO_GRANTS = Grants(())
