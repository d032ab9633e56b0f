"""The htpasswd + group file backend: slow hashes in a thread pool, successes in the shared
verified-credential cache, unknown users checked against a dummy hash."""

from __future__ import annotations

import functools
from concurrent.futures import Executor
from dataclasses import dataclass, field

from . import AuthResult, Outcome
from .cache import VerifiedCache, verify_hash
from .credentials import DEFAULT_DUMMY_SAMPLE, Htpasswd, PasswordHash, dummy_like


@dataclass(frozen=True)
class UserFiles:
    """One consistent view of the htpasswd and group files, swapped whole on reload."""

    htpasswd: Htpasswd
    groups: dict[str, frozenset[str]]
    reuse: PasswordHash | None = field(default=None, repr=False, compare=False)
    memberships: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        htpasswd: Htpasswd,
        groups: dict[str, frozenset[str]],
        reuse: PasswordHash | None = None,
    ) -> UserFiles:
        """Built at reload, off the event loop. `reuse`: the previous dummy, kept when the
        typical scheme and cost are the same (a scheme's decoy that is a slow hash, sha-crypt's,
        is not made again)."""
        return cls(htpasswd, groups, reuse, _memberships(groups))

    @functools.cached_property
    def dummy(self) -> PasswordHash:
        """What unknown users are checked against. Made when first asked for (a slow hash,
        but for bcrypt): by the authenticator, built off the event loop; never by `regproxy
        check`."""
        typical = self.htpasswd.typical_hash() or DEFAULT_DUMMY_SAMPLE
        reuse = self.reuse
        if reuse is not None and (reuse.scheme, reuse.cost) == (typical.scheme, typical.cost):
            return reuse
        return dummy_like(typical)

    def groups_of(self, user: str) -> frozenset[str]:
        """Every group of the group file that lists `user` (indexed at reload)."""
        return self.memberships.get(user, frozenset())


def _memberships(groups: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Each member's groups. Set operations over each group's members, not a loop over every
    membership: 100,000 users in 1,000 groups are indexed at each reload."""
    index: dict[str, frozenset[str]] = {}
    more: dict[str, list[str]] = {}  # the groups of members in several, after their first
    for group, members in groups.items():
        known = index.keys() & members
        index.update(dict.fromkeys(members - known, frozenset((group,))))
        for member in known:
            more.setdefault(member, []).append(group)
    for member, names in more.items():
        index[member] = index[member].union(names)
    return index


class HtpasswdAuthenticator:
    """Authenticator over one snapshot's `UserFiles`."""

    def __init__(self, files: UserFiles, cache: VerifiedCache[bool], executor: Executor) -> None:
        self._files = files
        self._cache = cache
        self._executor = executor
        files.dummy  # noqa: B018 (made now, off the event loop, not at the first unknown user)

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        files = self._files
        stored = files.htpasswd.users.get(user)
        secret = password.encode("utf-8", "surrogateescape")
        if stored is None:
            if not proven:
                await verify_hash(self._cache, self._executor, user, files.dummy, secret)
            return AuthResult(Outcome.NO_SUCH_USER)
        if not await verify_hash(self._cache, self._executor, user, stored, secret):
            return AuthResult(Outcome.WRONG_PASSWORD)
        return AuthResult(Outcome.OK, files.groups_of(user))

    def close(self) -> None:
        """Nothing of its own: the executor and the cache outlive snapshots."""
