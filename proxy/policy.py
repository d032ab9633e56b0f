"""Authorization: ordered rules, first match wins, deny by default. Pure: no I/O.

A rule matches on who is asking (users, groups, anonymous), from where (client networks),
which repository (globs with `${user}` and `${group}`) and, for manifest requests by tag, which
tag (globs too); the first rule that matches decides, grants only the actions it lists, and
names the upstream the request goes to. A rule with tags matches only requests by tag: a
request by digest, or for a blob, is decided by the rules without tags. When no rule matches
the answer is no. Without an ACL the built-in rules are the Apache recipe's: members of
the push group may do anything, any other valid user may pull.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .addresses import IPNetwork
from .identity import Identity
from .routes import ACTIONS, Action, Operation, valid_component

PLACEHOLDER_RE = re.compile(r"\$\{(user|group)\}")


@lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` stay within one path component; `**` crosses `/`."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(p, re.escape(p)) for p in parts))


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


@dataclass(frozen=True)
class Rule:
    """One ACL entry. Empty `users`/`groups`/`repositories`/`networks` match anything;
    `anonymous` True matches only requests without credentials, False only valid users."""

    actions: frozenset[Action]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    repositories: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    anonymous: bool = False
    tags: tuple[str, ...] = ()  # globs over the tag: only manifest requests by tag match
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
        if self.networks:
            return who.address is not None and any(who.address in n for n in self.networks)
        return True

    def matches_repository(self, who: Identity, repository: str) -> bool:
        return not self.repositories or _matches(self.repositories, who, repository)

    def matches_tag(self, who: Identity, tag: str | None) -> bool:
        """Rules without tags match any request; rules with tags only requests by tag."""
        if not self.tags:
            return True
        return tag is not None and _matches(self.tags, who, tag)

    @property
    def catch_all(self) -> bool:
        """Matches every valid user (or every anonymous request) on every repository."""
        return not (self.users or self.groups or self.repositories or self.networks or self.tags)


def _matches(patterns: tuple[str, ...], who: Identity, name: str) -> bool:
    return any(
        glob_regex(expanded).fullmatch(name)
        for pattern in patterns
        for expanded in _expand(pattern, who)
    )


@dataclass(frozen=True)
class Decision:
    """The answer, the rule that gave it (None: nothing matched) and where to forward."""

    allowed: bool
    rule: Rule | None

    @property
    def upstream(self) -> str | None:
        return self.rule.upstream if self.rule else None

    @property
    def reason(self) -> str:
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
    for rule in rules:
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
) -> Decision:
    """First matching rule decides. `action` None (the catalog) asks only whether the caller
    may use the registry at all: any valid user may, and anonymous callers may when some
    rule for anonymous requests grants anything."""
    if action is None:
        if not who.anonymous:
            return Decision(True, first_match(rules, who, None))
        rule = next((r for r in rules if r.matches_who(who) and r.actions), None)
        return Decision(rule is not None, rule)
    rule = first_match(rules, who, repository, tag)
    return Decision(rule is not None and action in rule.actions, rule)


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
    decision = decide(rules, who, operation.action, operation.repository, operation.tag)
    if not decision.allowed or operation.mount_from is None:
        return Verdict(decision)
    source = decide(rules, who, "pull", operation.mount_from)
    return Verdict(decision, not source.allowed or source.upstream != decision.upstream)
