"""Replay: every logged request decided twice, under the policy in force and under a proposed
one, and the requests whose answer would change, grouped as an operator reads them. Pure.

A request is classified by the proxy's own classifier and decided by the proxy's own rules
(`proxy.policy.rules.authorize`) for the logged user, with the grants in force at the logged
moment. What a log cannot tell is counted, never guessed: a request refused before
authentication (a 401: nobody knows who sent it, or behind Apache and nginx, which answer 401
to a refused group as well, whether the password was right), a user
neither side's files know while another source (LDAP, Redis, workload tokens, robots) might,
a token request, a line outside /v2 or refused before any decision.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from ..core.addresses import IPAddress, ip_address
from ..core.lru import Recent
from ..http.routes import Operation, Refusal, classify, is_proxied
from ..policy.grants import Grants
from ..policy.identity import Identity
from ..policy.rules import Rule, authorize
from .logread import Logged

_UNKNOWN = object()  # not in a cache (None is a cached answer there)
ROBOT_PREFIX = "robot$"  # robots are decided by their scopes and owner at the time: not here
FIRST = 5  # line numbers kept per kind of line not decided
KEPT_NAMES = 1000  # repositories kept per change: the pattern covers the rest
# Classifications and decisions remembered (up to twice this many, the least recently used
# forgotten): what bounds a replay's memory, whatever the log's length.
CACHED = 16_384


@dataclass(frozen=True)
class Users:
    """Who one side's files know: `known`, the users with an htpasswd entry (`source`), and
    their groups; `elsewhere`, the other sources that may know a user the files do not."""

    known: Container[str]
    memberships: Mapping[str, frozenset[str]]
    source: str
    elsewhere: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """One side: the rules, the grants, the users, where requests go by default, and the
    token endpoint's path in token server mode."""

    rules: tuple[Rule, ...]
    grants: Grants
    users: Users
    upstream: str
    token_path: str | None = None
    _edges: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        edges = sorted({t for g in self.grants for t in (g.granted, g.expires)})
        object.__setattr__(self, "_edges", edges)

    def epoch(self, moment: float) -> int:
        """Which stretch between grant starts and ends `moment` falls in: the same grants are
        in force throughout one."""
        return bisect.bisect(self._edges, moment)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one policy answers a request: allowed (and where it goes, whether a mount is
    dropped) or the refusal's status; `by`: what decided."""

    allowed: bool
    status: int | None
    upstream: str | None
    mount_dropped: bool
    by: str
    known: bool = True  # False: the user is not in the htpasswd file (and nowhere else)

    @property
    def answer(self) -> tuple[bool, int | None, str | None, bool, bool]:
        return self.allowed, self.status, self.upstream, self.mount_dropped, self.known

    def words(self, with_upstream: bool) -> str:
        if not self.allowed:
            return f"{'deny' if self.known else 'unknown user'} {self.status}"
        text = "allow" + (f" via {self.upstream}" if with_upstream else "")
        return text + (", mount dropped" if self.mount_dropped else "")


@dataclass
class Sample:
    """How many lines of one kind, and where the first few are (`FILE:LINE`)."""

    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.first) < FIRST:
            self.first.append(where)


@dataclass
class Change:
    """Requests of one user and action whose answer changes the same way, decided by the
    same rules: how many, on which repositories, first and last seen."""

    user: str | None
    action: str
    before: Outcome
    after: Outcome
    first_line: str  # FILE:LINE of the first one read
    count: int = 0
    first_seen: float = math.inf
    last_seen: float = -math.inf
    repositories: set[str] = field(default_factory=set)
    more: bool = False  # repositories beyond KEPT_NAMES were seen

    def add(self, moment: float, repository: str | None) -> None:
        self.count += 1
        if moment < self.first_seen:
            self.first_seen = moment
        if moment > self.last_seen:
            self.last_seen = moment
        if repository is not None and repository not in self.repositories:
            if len(self.repositories) < KEPT_NAMES:
                self.repositories.add(repository)
            else:
                self.more = True

    @property
    def pattern(self) -> str:
        """The repositories as one glob: the name, `team/*` or `team/**`; `-` for none."""
        return repository_pattern(self.repositories, self.more)


def repository_pattern(names: set[str], more: bool = False) -> str:
    if not names:
        return "-"
    if len(names) == 1 and not more:
        return next(iter(names))
    split = [name.split("/") for name in names]
    common: list[str] = []
    for level in zip(*split, strict=False):  # the shortest name bounds the common part
        if len(set(level)) > 1:
            break
        common.append(level[0])
    one_below = all(len(parts) == len(common) + 1 for parts in split) and not more
    glob = "*" if one_below else "**"
    return "/".join([*common, glob])


# The kinds of lines a replay does not decide, in the order the report shows them.
UNDECIDED = {
    "before_authentication": "refused before authentication, sender unknown",
    "unresolved": "users only another source (LDAP, Redis, tokens, robots) may know",
    "token": "token requests (token server mode: the registry decides the requests)",
    "not_v2": "not /v2 requests",
    "refused": "refused by regproxy before any decision (not a registry request)",
}


@dataclass(frozen=True, eq=False, slots=True)
class _Pair:
    """The two answers to one request, made once per distinct pair (compared by identity)."""

    before: Outcome
    after: Outcome
    changes: bool


class Replay:
    """Decides logged requests under `before` and `after` and keeps what changes."""

    def __init__(self, before: Policy, after: Policy) -> None:
        self.before, self.after = before, after
        self.requests = 0
        self.decided = 0
        self.malformed = Sample()
        self.undecided = {kind: Sample() for kind in UNDECIDED}
        self.unresolved_users: dict[str, int] = {}
        self.disagreements = Sample()  # answered in the log, refused by the current policy
        self.changes: dict[tuple[str | None, str, _Pair], Change] = {}
        self.source = "-"  # the log being read
        self.first_seen = math.inf
        self.last_seen = -math.inf
        rules = (*before.rules, *after.rules)
        # What a decision depends on beyond user, action and repository, if any rule reads it.
        self._networks = any(rule.networks for rule in rules)
        self._tags = any(rule.tags for rule in rules)
        self._grants = bool(before.grants or after.grants)
        # Bounded, and the requests a log repeats stay remembered (not emptied when full).
        self._operations: Recent[tuple[str, str], tuple[Operation, tuple[object, ...]] | str]
        self._operations = Recent(CACHED)
        self._pairs: Recent[tuple[object, ...], _Pair | None] = Recent(CACHED)
        self._interned: dict[tuple[Outcome, Outcome], _Pair] = {}  # as many as rule outcomes

    def add(self, logged: Logged | None, line: int) -> None:
        """Line `line` of the log `source` (None: malformed)."""
        if logged is None:
            self.malformed.add(self._where(line))
            return
        self.requests += 1
        moment = logged.time
        if moment < self.first_seen:
            self.first_seen = moment
        if moment > self.last_seen:
            self.last_seen = moment
        classified = self._operation(logged)
        if isinstance(classified, str):
            self.undecided[classified].add(self._where(line))
            return
        operation, reads = classified
        if logged.status == 401 or (logged.user is None and logged.status in (400, 429)):
            self.undecided["before_authentication"].add(self._where(line))
            return
        pair = self._pair(logged, operation, reads)
        if pair is None:
            self.undecided["unresolved"].add(self._where(line))
            user = logged.user or "-"
            if user in self.unresolved_users or len(self.unresolved_users) < KEPT_NAMES:
                self.unresolved_users[user] = self.unresolved_users.get(user, 0) + 1
            return
        self.decided += 1
        if not pair.before.allowed and 200 <= logged.status < 400:
            self.disagreements.add(self._where(line))
        if pair.changes:
            action = operation.action or operation.kind
            change = self.changes.get((logged.user, action, pair))
            if change is None:
                change = Change(logged.user, action, pair.before, pair.after, self._where(line))
                self.changes[(logged.user, action, pair)] = change
            change.add(moment, operation.repository)

    def _where(self, line: int) -> str:
        return f"{self.source}:{line}"

    def _operation(self, logged: Logged) -> tuple[Operation, tuple[object, ...]] | str:
        """The classified request and what a decision reads of it, or the kind of line it is
        when it cannot be decided."""
        key = (logged.method, logged.target)
        found = self._operations.get(key)
        if found is None:
            found = self._classify(logged.method, logged.target)
            self._operations.put(key, found)
        return found

    def _classify(self, method: str, target: str) -> tuple[Operation, tuple[object, ...]] | str:
        path, _, query = target.partition("?")
        if path in (self.before.token_path, self.after.token_path):
            return "token"
        if not method or not is_proxied(path):
            return "not_v2"
        operation = classify(method, path, query)
        if isinstance(operation, Refusal):
            return "refused"
        read = (
            operation.action,
            operation.repository,
            operation.tag if self._tags else None,
            operation.mount_from,
            operation.drop_mount,
            operation.kind == "ping",
        )  # fmt: skip: all `authorize` reads of an operation (a digest is not read)
        return operation, read

    def _pair(
        self, logged: Logged, operation: Operation, reads: tuple[object, ...]
    ) -> _Pair | None:
        """Both answers (None: a side cannot tell who the user is), cached by what `authorize`
        reads."""
        key: tuple[object, ...] = (logged.user, reads)
        address = None
        if self._networks:
            address = _address(logged.client)
            key += (address,)
        if self._grants:
            key += (self.before.epoch(logged.time), self.after.epoch(logged.time))
        found = self._pairs.get(key, _UNKNOWN)  # type: ignore[arg-type]
        if found is not _UNKNOWN:
            return found
        before = decide(self.before, logged.user, address, operation, logged.time)
        after = decide(self.after, logged.user, address, operation, logged.time)
        pair = None
        if before is not None and after is not None:
            pair = self._interned.get((before, after))
            if pair is None:
                pair = _Pair(before, after, before.answer != after.answer)
                self._interned[(before, after)] = pair
        self._pairs.put(key, pair)
        return pair

    def sorted_changes(self) -> list[Change]:
        """The changes, most requests first."""
        return sorted(self.changes.values(), key=lambda c: (-c.count, c.user or "", c.action))

    @property
    def changed(self) -> int:
        return sum(change.count for change in self.changes.values())


def _address(client: str) -> IPAddress | None:
    try:
        return ip_address(client)
    except ValueError:
        return None


def decide(
    policy: Policy, user: str | None, address: IPAddress | None, operation: Operation,
    moment: float,
) -> Outcome | None:  # fmt: skip
    """What `policy` answers `user` for `operation` at `moment`; None: it cannot tell who
    `user` is (another source might know them)."""
    if user is None:
        who = Identity(None, frozenset(), address)
    elif user.startswith(ROBOT_PREFIX):
        return None
    elif user in policy.users.known:
        who = Identity(user, policy.users.memberships.get(user, frozenset()), address)
    elif policy.users.elsewhere:
        return None
    else:
        return Outcome(False, 401, None, False, f"not in {policy.users.source}", known=False)
    verdict = authorize(policy.rules, who, operation, policy.grants.at(moment))
    decision = verdict.decision
    if not verdict.allowed:
        return Outcome(False, 401 if who.anonymous else 403, None, False, decision.reason)
    dropped = verdict.drop_mount or operation.drop_mount
    return Outcome(True, None, decision.upstream or policy.upstream, dropped, decision.reason)
