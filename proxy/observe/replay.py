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
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field, fields

from ..core.addresses import IPAddress, ip_address
from ..core.lru import Recent
from ..http.routes import Operation, Refusal, classify, is_proxied
from ..policy.grants import Grants
from ..policy.identity import Identity
from ..policy.rules import Rule, authorize
from .logread import USUAL_LINE, Logged, apache_time, parse_line

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


@dataclass(slots=True)
class Sample:
    """How many lines of one kind, and where the first few are (`FILE:LINE`)."""

    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, source: str, line: int) -> None:
        self.count += 1
        if len(self.first) < FIRST:  # formatted only for the few kept
            self.first.append(f"{source}:{line}")

    def merge(self, later: Sample, base: int) -> None:
        """Add the lines of `later`, read after these, its line numbers `base` lines on."""
        self.count += later.count
        room = FIRST - len(self.first)
        self.first += [_shifted(where, base) for where in later.first[:room]]


def _shifted(where: str, base: int) -> str:
    """`FILE:LINE` of a piece of a file, as a line number of the whole file."""
    source, _, line = where.rpartition(":")
    return f"{source}:{int(line) + base}"


@dataclass
class Change:
    """Requests of one user and action whose answer changes the same way, decided by the
    same rules: how many, on which repositories (the first `KEPT_NAMES` seen, in order), first
    and last seen."""

    user: str | None
    action: str
    before: Outcome
    after: Outcome
    first_line: str  # FILE:LINE of the first one read
    count: int = 0
    first_seen: float = math.inf
    last_seen: float = -math.inf
    repositories: dict[str, None] = field(default_factory=dict)  # a set that keeps its order
    more: bool = False  # repositories beyond KEPT_NAMES were seen

    def add(self, moment: float, repository: str | None) -> None:
        self.count += 1
        if moment < self.first_seen:
            self.first_seen = moment
        if moment > self.last_seen:
            self.last_seen = moment
        if repository is not None and repository not in self.repositories:
            self._name(repository)

    def _name(self, repository: str) -> None:
        if len(self.repositories) < KEPT_NAMES:
            self.repositories[repository] = None
        else:
            self.more = True

    def merge(self, later: Change) -> None:
        """Add the requests of `later`, read after these: the same as reading them here."""
        self.count += later.count
        self.first_seen = min(self.first_seen, later.first_seen)
        self.last_seen = max(self.last_seen, later.last_seen)
        # `later` kept its first names in order: those not here come first among them.
        for repository in later.repositories:
            if repository not in self.repositories:
                self._name(repository)
        self.more = self.more or later.more

    @property
    def pattern(self) -> str:
        """The repositories as one glob: the name, `team/*` or `team/**`; `-` for none."""
        return repository_pattern(self.repositories, self.more)


def repository_pattern(names: Collection[str], more: bool = False) -> str:
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

ChangeKey = tuple[str | None, str, Outcome, Outcome]  # user, action, before, after


@dataclass
class Tally:
    """What a replay counted, and all a report reads. Tallies of consecutive pieces of the
    logs merge into the tally of reading them in one go."""

    requests: int = 0
    decided: int = 0
    malformed: Sample = field(default_factory=Sample)
    undecided: dict[str, Sample] = field(
        default_factory=lambda: {kind: Sample() for kind in UNDECIDED}
    )
    # The unresolved users counted: the KEPT_NAMES first in sort order (not in the order seen:
    # the order seen cannot be merged from pieces read apart), in the order seen.
    unresolved_users: dict[str, int] = field(default_factory=dict)
    disagreements: Sample = field(default_factory=Sample)  # answered in the log, refused now
    changes: dict[ChangeKey, Change] = field(default_factory=dict)
    first_seen: float = math.inf
    last_seen: float = -math.inf
    _highest: str | None = None  # the last unresolved user counted, once KEPT_NAMES are

    def unresolved(self, user: str) -> None:
        users = self.unresolved_users
        if user in users:
            users[user] += 1
        elif self._highest is None or user < self._highest:
            users[user] = 1
            self._trim()

    def _trim(self) -> None:
        users = self.unresolved_users
        while len(users) > KEPT_NAMES:
            del users[max(users)]
        self._highest = max(users) if len(users) == KEPT_NAMES else None

    def merge(self, later: Tally, base: int = 0) -> None:
        """Add `later`, the tally of the lines read after these; its line numbers are `base`
        lines on (the lines of its log read before it)."""
        self.requests += later.requests
        self.decided += later.decided
        self.first_seen = min(self.first_seen, later.first_seen)
        self.last_seen = max(self.last_seen, later.last_seen)
        for mine, theirs in (
            (self.malformed, later.malformed),
            (self.disagreements, later.disagreements),
            *((self.undecided[kind], later.undecided[kind]) for kind in UNDECIDED),
        ):
            mine.merge(theirs, base)
        for user, count in later.unresolved_users.items():
            # Exact: a user among the first KEPT_NAMES of all is among those of each piece.
            self.unresolved_users[user] = self.unresolved_users.get(user, 0) + count
        self._trim()
        for key, change in later.changes.items():
            found = self.changes.get(key)
            if found is None:
                found = Change(key[0], key[1], key[2], key[3], _shifted(change.first_line, base))
                self.changes[key] = found
            found.merge(change)

    def sorted_changes(self) -> list[Change]:
        """The changes, most requests first."""
        return sorted(self.changes.values(), key=lambda c: (-c.count, c.user or "", c.action))

    @property
    def changed(self) -> int:
        return sum(change.count for change in self.changes.values())


@dataclass(frozen=True, slots=True)
class _Effect:
    """What the two answers to a request make of it: a user a side cannot tell, or decided
    (refused by the policy in force; the change it belongs to, if it changes)."""

    unresolved: bool = False
    refused: bool = False
    change: Change | None = None


Classified = tuple[Operation, tuple[object, ...]] | str


class Replay(Tally):
    """Decides logged requests under `before` and `after` and keeps what changes."""

    def __init__(self, before: Policy, after: Policy) -> None:
        super().__init__()
        self.before, self.after = before, after
        self.source = "-"  # the log being read
        self.line = 0  # the last line read of it
        rules = (*before.rules, *after.rules)
        # What a decision depends on beyond user, action and repository, if any rule reads it.
        self._networks = any(rule.networks for rule in rules)
        self._tags = any(rule.tags for rule in rules)
        self._grants = bool(before.grants or after.grants)
        # Bounded, and the requests a log repeats stay remembered (not emptied when full).
        self._operations: Recent[tuple[str, str], Classified] = Recent(CACHED)
        self._effects: Recent[tuple[object, ...], _Effect] = Recent(CACHED)

    def tally(self) -> Tally:
        """What was counted, without the memos (to hand to another process)."""
        return Tally(**{f.name: getattr(self, f.name) for f in fields(Tally)})

    def feed(self, lines: Iterable[str]) -> None:
        """Add each of `lines`, the lines of `source` from its first; `line` counts them.
        The usual line is read here, any other by `parse_line`."""
        request, usual = self._request, USUAL_LINE.fullmatch  # looked up once, not per line
        number, read, moment = 0, "", 0.0
        try:
            for number, text in enumerate(lines, 1):
                match = usual(text)
                if match is None:
                    self.add(parse_line(text), number)
                    continue
                client, user, stamp, method, target, status = match.groups()
                if stamp != read:  # a log's lines share their second: each read once
                    try:
                        moment = apache_time(stamp)
                    except (ValueError, KeyError):
                        self.malformed.add(self.source, number)
                        continue
                    read = stamp
                user = None if user == "-" else user
                request(moment, client, user, method, target, int(status), number)
        finally:
            self.line = number

    def add(self, logged: Logged | None, line: int) -> None:
        """Line `line` of the log `source` (None: malformed)."""
        if logged is None:
            self.malformed.add(self.source, line)
            return
        self._request(*logged, line)

    def _request(
        self, moment: float, client: str, user: str | None, method: str, target: str,
        status: int, line: int,
    ) -> None:  # fmt: skip
        classified = self._operations.kept((method, target), lambda: self._classify(method, target))
        self.requests += 1
        if moment < self.first_seen:
            self.first_seen = moment
        if moment > self.last_seen:
            self.last_seen = moment
        if isinstance(classified, str):
            self.undecided[classified].add(self.source, line)
            return
        if status == 401 or (user is None and status in (400, 429)):
            self.undecided["before_authentication"].add(self.source, line)
            return
        operation, reads = classified
        # Everything a decision reads: the address and the grants in force only when a rule
        # or a grant reads them. A hit answers what deciding again would.
        key: tuple[object, ...] = (user, reads)
        if self._networks:
            key += (client,)
        if self._grants:
            key += (self.before.epoch(moment), self.after.epoch(moment))
        effect = self._effects.kept(
            key,
            lambda: self._effect(
                user, _address(client) if self._networks else None, operation, moment, line
            ),
        )
        if effect.unresolved:
            self.undecided["unresolved"].add(self.source, line)
            self.unresolved(user or "-")
            return
        self.decided += 1
        if effect.refused and 200 <= status < 400:
            self.disagreements.add(self.source, line)
        if effect.change is not None:
            effect.change.add(moment, operation.repository)

    def _effect(
        self, user: str | None, address: IPAddress | None, operation: Operation, moment: float,
        line: int,
    ) -> _Effect:  # fmt: skip
        """Both answers (line `line`, for a change it is the first of)."""
        before = decide(self.before, user, address, operation, moment)
        after = decide(self.after, user, address, operation, moment)
        if before is None or after is None:
            return _Effect(unresolved=True)
        if before.answer == after.answer:
            return _Effect(refused=not before.allowed)
        key = (user, operation.action or operation.kind, before, after)
        change = self.changes.get(key)
        if change is None:
            change = Change(*key, first_line=f"{self.source}:{line}")
            self.changes[key] = change
        return _Effect(refused=not before.allowed, change=change)

    def _classify(self, method: str, target: str) -> Classified:
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
