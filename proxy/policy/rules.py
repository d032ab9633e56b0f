"""Authorization: ordered rules, first match wins, deny by default. Pure: no I/O.

A rule matches on who is asking (users, groups, anonymous, a workload token's claims), from
where (client networks), which repository (globs with `${user}` and `${group}`) and, for
manifest requests by tag, which tag (globs too); the first rule that matches decides, grants
only the actions it lists, and names the upstream the request goes to. A rule with tags
matches only requests by tag: a request by digest, or for a blob, is decided by the rules
without tags. When no rule matches the answer is no. Without an ACL the built-in rules are
the Apache recipe's: members of
the push group may do anything, any other valid user may pull.

A robot's request is decided as its principal's (its owner's) would be, and then only within
the robot's own scopes: it never exceeds, nor outlives, whoever it acts for.

What the ACL refuses a user, a break-glass grant in force at that moment may allow
(`proxy.policy.grants`): the decision then names the grant, and the rule that refused.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.addresses import IPNetwork
from ..core.lru import Recent
from ..http.routes import ACTIONS, Action, Operation, valid_component
from . import claims as claim_values
from .globs import glob_pattern, glob_regex
from .grants import NONE_ACTIVE, Active, Grant
from .identity import Identity

PLACEHOLDER_RE = re.compile(r"\$\{(user|group)\}")


_WILDCARDS = frozenset("*?$")
_COMPONENT_HOLDER = re.compile(r"(?:^|(?<=/))\$\{(user|group)\}(?=/|$)")


class Glob:
    """One repository or tag glob, prepared once when the rule is made.

    A glob without placeholders that is a literal name, or a literal prefix followed by `**`
    (`team42/**`, the most common kind), is compared as text: no regular expression to
    compile, so a 10,000-rule ACL loads in a fraction of a second. Placeholders that are whole
    path components (`${user}/**`, `teams/${group}/*`) are matched by capturing that component
    and comparing it with the caller's name or groups: no compiling per caller, whatever the
    number of users. A placeholder inside a component (`ci-${user}-*`) is filled in and
    compiled per caller (cached), as it could otherwise split the component more than one
    way. Any other glob is compiled when a request first needs it: 10,000 rules with
    wildcards load without compiling 10,000 regular expressions."""

    __slots__ = ("_regex", "exact", "holders", "pattern", "prefix", "whole")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        holders = "$" in pattern  # most globs have no placeholder: no searching them for one
        self.holders = tuple(PLACEHOLDER_RE.findall(pattern)) if holders else ()
        head = pattern.removesuffix("**")
        literal = _WILDCARDS.isdisjoint(head)
        self.exact = pattern if literal and head == pattern else None
        self.prefix = head if literal and head != pattern else None  # `**` matches anything
        self.whole = not holders or len(_COMPONENT_HOLDER.findall(pattern)) == len(self.holders)
        self._regex: re.Pattern[str] | None = None

    def _compiled(self) -> re.Pattern[str]:
        # Two threads may both compile it: the same pattern either way.
        if self._regex is None:
            self._regex = re.compile(glob_pattern(self.pattern, True), re.DOTALL)
        return self._regex

    def matches(self, who: Identity, name: str) -> bool:
        if self.exact is not None:
            return name == self.exact
        if self.prefix is not None:
            return name.startswith(self.prefix)
        if not self.whole:
            return any(glob_regex(text).fullmatch(name) for text in _expand(self.pattern, who))
        found = self._compiled().fullmatch(name)
        if found is None:
            return False
        if not self.holders:
            return True
        if who.user is None or ("user" in self.holders and not valid_component(who.user)):
            return False
        chosen = {v for k, v in zip(self.holders, found.groups(), strict=True) if k == "group"}
        if len(chosen) > 1:  # one group fills every ${group} of a pattern
            return False
        return all(
            value == who.user if kind == "user" else value in who.groups and valid_component(value)
            for kind, value in zip(self.holders, found.groups(), strict=True)
        )


def _expand(pattern: str, who: Identity) -> list[str]:
    """The pattern with its placeholders filled in, once per group for `${group}`.

    A placeholder stands for exactly one repository path component: a user or group whose
    name is not one (`alice/sub`, `*`, `Domain Users`) never fills it, so `${user}/**` can
    never reach into another user's namespace, whichever identity source named them.
    """
    if "${" not in pattern:
        return [pattern]
    if who.user is None or ("${user}" in pattern and not valid_component(who.user)):
        return []
    groups = sorted(g for g in who.groups if valid_component(g)) if "${group}" in pattern else [""]
    text = pattern.replace("${user}", who.user)
    return [text.replace("${group}", group) for group in groups]


@dataclass(frozen=True, slots=True)  # no dict per rule: an ACL may hold 10,000
class Rule:
    """One ACL entry. Empty `users`/`groups`/`repositories`/`networks`/`claims` match anything;
    `anonymous` True matches only requests without credentials, False only valid users;
    `claims` and `issuers` match only workload tokens of one of `issuers` (none: no token)
    whose claims meet every condition."""

    actions: frozenset[Action]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    repositories: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    anonymous: bool = False
    tags: tuple[str, ...] = ()  # globs over the tag: only manifest requests by tag match
    claims: claim_values.Conditions = ()
    issuers: frozenset[str] = frozenset()
    upstream: str | None = None
    origin: str = "built-in"
    description: str = field(default="", compare=False)
    _repositories: tuple[Glob, ...] = field(init=False, repr=False, compare=False)
    _tags: tuple[Glob, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_repositories", tuple(Glob(p) for p in self.repositories))
        object.__setattr__(self, "_tags", tuple(Glob(p) for p in self.tags))

    def matches_who(self, who: Identity) -> bool:
        if self.anonymous != who.anonymous:
            return False
        if self.users and who.user not in self.users:
            return False
        if self.groups and not self.groups & who.groups:
            return False
        # Claims are only ever read together with who vouched for them.
        if (self.claims or self.issuers) and who.issuer not in self.issuers:
            return False
        if self.claims and not claim_values.holds(self.claims, who.claims):
            return False
        if self.networks:
            return who.address is not None and any(who.address in n for n in self.networks)
        return True

    def matches_repository(self, who: Identity, repository: str) -> bool:
        return not self._repositories or any(g.matches(who, repository) for g in self._repositories)

    def matches_tag(self, who: Identity, tag: str | None) -> bool:
        """Rules without tags match any request; rules with tags only requests by tag."""
        if not self._tags:
            return True
        return tag is not None and any(g.matches(who, tag) for g in self._tags)

    @property
    def catch_all(self) -> bool:
        """Matches every valid user (or every anonymous request) on every repository."""
        return not (
            self.users or self.groups or self.repositories or self.networks or self.tags
            or self.claims or self.issuers
        )  # fmt: skip


ANY = "*"  # index key: a rule that may match any first path component


def first_components(rule: Rule) -> set[str]:
    """The first path components of the repositories `rule` can match: literal names,
    `${user}`/`${group}` (looked up by the caller's names), or ANY."""
    keys = set()
    for pattern in rule.repositories or ("**",):
        first = pattern.split("/", 1)[0]
        if first in ("${user}", "${group}") or not any(c in first for c in "*?$"):
            keys.add(first)
        else:
            keys.add(ANY)
    return keys


K = TypeVar("K")
# A caller in more groups than this has the lists of their rules kept, merged into one when
# more than this many of those groups have rules.
FEW_GROUPS = 16
MERGES_KEPT = 32  # per rule set and generation: a merge holds each of the caller's rules once
Caller = tuple[str, str]  # ("user", name), ("group", name), ("issuer", iss), or one below
_ANONYMOUS: Caller = ("anonymous", "")
_EVERYONE: Caller = ("everyone", "")


def _callers(rule: Rule) -> list[Caller]:
    """Who `rule` can match, as index keys: requests without credentials, its users (when it
    names some), else its groups, else its issuers' tokens, else every valid user."""
    if rule.anonymous:
        return [_ANONYMOUS]
    if rule.users:
        return [("user", user) for user in rule.users]
    if rule.groups:
        return [("group", group) for group in rule.groups]
    if rule.claims or rule.issuers:
        return [("issuer", issuer) for issuer in rule.issuers]  # none: it never matches
    return [_EVERYONE]


def positions(pairs: Iterable[tuple[K, int]]) -> dict[K, tuple[int, ...]]:
    """Each key's rule positions, in order."""
    index: dict[K, list[int]] = {}
    for key, position in pairs:
        index.setdefault(key, []).append(position)
    return {key: tuple(found) for key, found in index.items()}  # a list keeps room to grow


class RuleSet(tuple[Rule, ...]):
    """The rules in order, indexed twice: by the first path component a rule can match, and
    by whom it can match (a user, a group, an issuer, every valid user, anonymous requests).
    Finding the deciding rule walks, in order, the shorter of the two lists of rules that
    could match (both hold every rule that does), however many rules there are. Built with
    the snapshot, off the event loop."""

    _index: dict[str, tuple[int, ...]]
    _everywhere: bool
    _who: dict[Caller, tuple[int, ...]]
    _who_untagged: dict[Caller, tuple[int, ...]]  # the rules without tags
    _groups: frozenset[str]
    _reads: frozenset[str]
    _names_users: bool
    _merges: Recent[tuple[bool, str | None, frozenset[str], str | None], Sequence[Sequence[int]]]
    _named_groups: Recent[frozenset[str], frozenset[str]]

    def __new__(cls, rules: Iterable[Rule]) -> RuleSet:
        self = super().__new__(cls, rules)
        numbered = list(enumerate(self))  # one int object per position, shared by the indexes
        self._index = positions((k, i) for i, r in numbered for k in first_components(r))
        self._everywhere = self._index.keys() <= {ANY}  # no rule names a first component
        callers = [(key, i) for i, rule in numbered for key in _callers(rule)]
        self._who = positions(callers)
        self._who_untagged = positions((key, i) for key, i in callers if not self[i].tags)
        self._groups = frozenset(name for kind, name in self._who if kind == "group")
        globs = [g for r in self for g in (*r.repositories, *r.tags)]
        self._reads = frozenset(  # which of a caller's attributes some rule reads
            ({"user"} if any(r.users for r in self) or any("${user}" in g for g in globs)
             else set())
            | ({"groups"} if any("${group}" in g for g in globs) else set())
            | ({"claims"} if any(r.claims or r.issuers for r in self) else set())
            | ({"address"} if any(r.networks for r in self) else set())
        )  # fmt: skip
        self._names_users = any(kind == "user" for kind, _ in self._who)
        self._merges = Recent(MERGES_KEPT)
        self._named_groups = Recent(MERGES_KEPT)
        return self

    def viewer(self, who: Identity) -> Hashable:
        """What of `who` these rules can tell apart: two callers with the same viewer are
        decided alike everywhere (many users of the same groups share one). Robots and
        workload tokens are told apart by their scopes, claims and issuer."""
        reads = self._reads
        return (
            who.anonymous,
            who.user if "user" in reads or who.robot is not None else None,
            who.groups if "groups" in reads else self._named(who.groups),
            who.address if "address" in reads else None,
            (who.issuer, _frozen(who.claims)) if "claims" in reads else None,
            who.robot,
        )

    def candidates(self, who: Identity, repository: str | None, tag: str | None = None
                   ) -> Iterable[Rule]:  # fmt: skip
        """The rules, in order, that could match `repository` (None: any) for `who`; `tag`:
        the tag of a manifest request by tag (None: only rules without tags can match)."""
        lists = self._for_caller(who, tagged=tag is not None)
        if repository is not None and not self._everywhere:
            by_name = self._for_repository(who, repository)
            if sum(map(len, by_name)) < sum(map(len, lists)):
                lists = by_name
        return self._merged(lists)

    def for_caller(self, who: Identity) -> Iterable[Rule]:
        """The rules, in order, that could match `who`, on any repository, tags or not."""
        return self._merged(self._for_caller(who, tagged=True))

    def _merged(self, lists: Sequence[Sequence[int]]) -> Iterable[Rule]:
        if len(lists) <= 1:
            return (self[i] for i in (lists[0] if lists else ()))
        return (self[i] for i in heapq.merge(*lists))

    def _for_repository(self, who: Identity, repository: str) -> list[tuple[int, ...]]:
        first = repository.split("/", 1)[0]
        keys = [first, ANY]
        if who.user == first:
            keys.append("${user}")
        if first in who.groups:
            keys.append("${group}")
        return [self._index[key] for key in keys if key in self._index]

    def _for_caller(self, who: Identity, tagged: bool) -> Sequence[Sequence[int]]:
        if who.anonymous:
            return self._positions([_ANONYMOUS], tagged)
        if len(who.groups) <= FEW_GROUPS:
            return self._positions(_keys(who, self._named(who.groups)), tagged)
        # Finding a list per group, and merging them, on every request would cost as much as
        # the groups: what was found is kept for the next request in the same groups (the
        # group file's set of them, its hash computed once), by the same user if rules name
        # users.
        user = who.user if self._names_users else None
        return self._merges.kept(
            (tagged, user, who.groups, who.issuer), lambda: self._merge(who, tagged)
        )

    def _merge(self, who: Identity, tagged: bool) -> Sequence[Sequence[int]]:
        lists = self._positions(_keys(who, self._named(who.groups)), tagged)
        # A rule for several of the groups is in each of their lists: once in the merge.
        return lists if len(lists) <= FEW_GROUPS else [tuple(sorted(set().union(*lists)))]

    def _named(self, groups: frozenset[str]) -> frozenset[str]:
        """Those of `groups` that rules name; kept for a caller in many groups, whose
        viewer (the catalog's key) would otherwise be a new set to hash on every request."""
        if len(groups) <= FEW_GROUPS:
            return groups & self._groups  # walks the smaller of the two
        return self._named_groups.kept(groups, lambda: groups & self._groups)

    def _positions(self, keys: Iterable[Caller], tagged: bool) -> list[tuple[int, ...]]:
        index = self._who if tagged else self._who_untagged
        return [index[key] for key in keys if key in index]


def _keys(who: Identity, groups: frozenset[str]) -> list[Caller]:
    """The index keys of a caller with credentials, `groups` those of theirs rules name."""
    keys = [_EVERYONE, ("user", who.user or ""), *(("group", g) for g in groups)]
    if who.issuer is not None:
        keys.append(("issuer", who.issuer))
    return keys


def _frozen(claims: Mapping[str, Any]) -> str:
    """A workload token's claims as one comparable text."""
    return json.dumps(dict(claims), sort_keys=True, default=repr)


@dataclass(frozen=True)
class Decision:
    """The answer, the rule that gave it (None: nothing matched) and where to forward. With
    `grant`, the grant allowed what `rule` (or the default) refused; the request still goes
    where that rule routes the repository."""

    allowed: bool
    rule: Rule | None
    limited_by: str = ""  # what refused an action the rule grants (a robot's scopes)
    grant: Grant | None = None

    @property
    def upstream(self) -> str | None:
        return self.rule.upstream if self.rule else None

    @property
    def reason(self) -> str:
        if self.grant:
            return f"grant {self.grant.id} ({self.grant.origin})"
        return self.acl_reason

    @property
    def acl_reason(self) -> str:
        """What the ACL says, whatever a grant adds."""
        if self.limited_by:
            return self.limited_by
        if self.rule:
            return f"rule {self.rule.origin}"
        if self.allowed:
            return "any valid user may list the catalog (filtered by pull)"
        return "no rule matched (deny by default)"


def recipe_rules(push_group: str) -> tuple[Rule, ...]:
    """The Apache recipe: the push group may push and delete, every valid user may pull."""
    return (
        Rule(
            frozenset(ACTIONS),
            groups=frozenset({push_group}),
            origin=f"built-in: group {push_group}",
        ),
        Rule(frozenset({"pull"}), origin="built-in: valid-user"),
    )


def first_match(
    rules: tuple[Rule, ...], who: Identity, repository: str | None, tag: str | None = None
) -> Rule | None:
    """The deciding rule; with `repository` None, repository constraints are not checked.
    `tag` is the tag of a manifest request by tag (None for any other request)."""
    candidates: Iterable[Rule] = rules
    if isinstance(rules, RuleSet):
        candidates = rules.candidates(who, repository, tag)
    for rule in candidates:
        if (
            rule.matches_who(who)
            and (repository is None or rule.matches_repository(who, repository))
            and rule.matches_tag(who, tag)
        ):
            return rule
    return None


def decide(
    rules: tuple[Rule, ...],
    who: Identity,
    action: Action | None,
    repository: str | None = None,
    tag: str | None = None,
    grants: Active = NONE_ACTIVE,
) -> Decision:
    """First matching rule decides; what it refuses, a grant in force may allow. `action`
    None (the catalog) asks only whether the caller may use the registry at all: any valid
    user may, and anonymous callers may when some rule for anonymous requests grants
    anything."""
    if who.robot is not None:
        return _within_scopes(rules, who, action, repository, tag)
    if action is None:
        if not who.anonymous:
            return Decision(True, first_match(rules, who, None))
        candidates = rules.for_caller(who) if isinstance(rules, RuleSet) else rules
        rule = next((r for r in candidates if r.matches_who(who) and r.actions), None)
        return Decision(rule is not None, rule)
    rule = first_match(rules, who, repository, tag)
    if rule is not None and action in rule.actions:
        return Decision(True, rule)
    grant = grants.find(who.user, action, repository) if repository is not None else None
    return Decision(grant is not None, rule, grant=grant)


def _within_scopes(
    rules: tuple[Rule, ...],
    who: Identity,
    action: Action | None,
    repository: str | None,
    tag: str | None,
) -> Decision:
    """A robot: what its principal may do, narrowed to the robot's own scopes."""
    robot = who.robot
    assert robot is not None
    decision = decide(rules, robot.acting(who.address), action, repository, tag)
    if action is None or not decision.allowed:
        return decision
    if (
        action in robot.actions
        and repository is not None
        and any(glob_regex(g).fullmatch(repository) for g in robot.repositories)
    ):
        return decision
    return Decision(False, decision.rule, f"outside the scopes of robot {robot.name}")


@dataclass(frozen=True)
class Verdict:
    """What to do with one classified request."""

    decision: Decision
    drop_mount: bool = False  # forward the upload without its cross-repository mount
    mount_grant: Grant | None = None  # the grant that allowed reading the mount's source

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def authorize(
    rules: tuple[Rule, ...], who: Identity, operation: Operation, grants: Active = NONE_ACTIVE
) -> Verdict:
    """Check every repository the operation touches (with the grants in force).

    A cross-repository mount also reads `mount_from`: without pull there (or when the two
    repositories live on different upstreams) the mount is dropped, so the registry starts an
    ordinary upload and nothing leaks from the other repository.
    """
    if operation.kind == "ping" and who.anonymous:
        # Always challenge: clients learn from the ping whether to send credentials, and
        # one that got 200 here would never send them, even to push.
        return Verdict(Decision(False, None))
    decision = decide(rules, who, operation.action, operation.repository, operation.tag, grants)
    if not decision.allowed or operation.mount_from is None:
        return Verdict(decision)
    source = decide(rules, who, "pull", operation.mount_from, grants=grants)
    drop = not source.allowed or source.upstream != decision.upstream
    return Verdict(decision, drop, None if drop else source.grant)
