"""Authorization: ordered rules, first match wins, deny by default. Pure: no I/O.

A rule matches on who is asking (users, groups, anonymous, a workload token's claims), from
where (client networks) and which repository (globs with `${user}` and `${group}`); the first
rule that matches decides,
grants only the actions it lists, and names the upstream the request goes to. When no rule
matches the answer is no. Without an ACL the built-in rules are the Apache recipe's: members of
the push group may do anything, any other valid user may pull.

A robot's request is decided as its principal's (its owner's) would be, and then only within
the robot's own scopes: it never exceeds, nor outlives, whoever it acts for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import claims as claim_values
from .addresses import IPNetwork
from .globs import glob_regex
from .identity import Identity
from .routes import ACTIONS, Action, Operation

PLACEHOLDER_RE = re.compile(r"\$\{(user|group)\}")


def _expand(pattern: str, who: Identity) -> list[str]:
    """Substitute placeholders literally: a user called `*` must not become a wildcard."""
    if "${" not in pattern:
        return [pattern]
    if who.user is None:
        return []
    values = [who.user]
    if "${group}" in pattern:
        values = sorted(who.groups)
    out = []
    for group in values:
        text = pattern.replace("${user}", _escape_glob(who.user))
        out.append(text.replace("${group}", _escape_glob(group)))
    return out


def _escape_glob(value: str) -> str:
    # Names with glob characters can never be repository names; make them unmatchable.
    return value if not any(c in value for c in "*?") else "\0"


@dataclass(frozen=True)
class Rule:
    """One ACL entry. Empty `users`/`groups`/`repositories`/`networks`/`claims` match anything;
    `anonymous` True matches only requests without credentials, False only valid users;
    `claims` match only identities from workload tokens whose claims meet every condition."""

    actions: frozenset[Action]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    repositories: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    claims: claim_values.Conditions = ()
    anonymous: bool = False
    upstream: str | None = None
    origin: str = "built-in"
    description: str = field(default="", compare=False)

    def matches_who(self, who: Identity) -> bool:
        if self.anonymous != who.anonymous:
            return False
        if self.users and who.user not in self.users:
            return False
        if self.groups and not self.groups & who.groups:
            return False
        if self.claims and not claim_values.holds(self.claims, who.claims):
            return False
        if self.networks:
            return who.address is not None and any(who.address in n for n in self.networks)
        return True

    def matches_repository(self, who: Identity, repository: str) -> bool:
        if not self.repositories:
            return True
        return any(
            glob_regex(expanded).fullmatch(repository)
            for pattern in self.repositories
            for expanded in _expand(pattern, who)
        )

    @property
    def catch_all(self) -> bool:
        """Matches every valid user (or every anonymous request) on every repository."""
        return not (self.users or self.groups or self.repositories or self.networks or self.claims)


@dataclass(frozen=True)
class Decision:
    """The answer, the rule that gave it (None: nothing matched) and where to forward."""

    allowed: bool
    rule: Rule | None
    limited_by: str = ""  # what refused an action the rule grants (a robot's scopes)

    @property
    def upstream(self) -> str | None:
        return self.rule.upstream if self.rule else None

    @property
    def reason(self) -> str:
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


def first_match(rules: tuple[Rule, ...], who: Identity, repository: str | None) -> Rule | None:
    """The deciding rule; with `repository` None, repository constraints are not checked."""
    for rule in rules:
        if rule.matches_who(who) and (
            repository is None or rule.matches_repository(who, repository)
        ):
            return rule
    return None


def decide(
    rules: tuple[Rule, ...], who: Identity, action: Action | None, repository: str | None = None
) -> Decision:
    """First matching rule decides. `action` None (the catalog) asks only whether the caller
    may use the registry at all: any valid user may, and anonymous callers may when some
    rule for anonymous requests grants anything."""
    if who.robot is not None:
        return _within_scopes(rules, who, action, repository)
    if action is None:
        if not who.anonymous:
            return Decision(True, first_match(rules, who, None))
        rule = next((r for r in rules if r.matches_who(who) and r.actions), None)
        return Decision(rule is not None, rule)
    rule = first_match(rules, who, repository)
    return Decision(rule is not None and action in rule.actions, rule)


def _within_scopes(
    rules: tuple[Rule, ...], who: Identity, action: Action | None, repository: str | None
) -> Decision:
    """A robot: what its principal may do, narrowed to the robot's own scopes."""
    robot = who.robot
    assert robot is not None
    decision = decide(rules, robot.acting(who.address), action, repository)
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

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def authorize(rules: tuple[Rule, ...], who: Identity, operation: Operation) -> Verdict:
    """Check every repository the operation touches.

    A cross-repository mount also reads `mount_from`: without pull there (or when the two
    repositories live on different upstreams) the mount is dropped, so the registry starts an
    ordinary upload and nothing leaks from the other repository.
    """
    if operation.kind == "ping" and who.anonymous:
        # Always challenge: clients learn from the ping whether to send credentials, and
        # one that got 200 here would never send them, even to push.
        return Verdict(Decision(False, None))
    decision = decide(rules, who, operation.action, operation.repository)
    if not decision.allowed or operation.mount_from is None:
        return Verdict(decision)
    source = decide(rules, who, "pull", operation.mount_from)
    return Verdict(decision, not source.allowed or source.upstream != decision.upstream)
