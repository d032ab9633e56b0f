"""Authorization: ordered rules, first match wins, deny by default. Pure: no I/O.

A rule matches on who is asking (and, later, which repository); the first rule that matches
decides, and grants only the actions it lists. When no rule matches the answer is no. Without
an ACL the built-in rules are the Apache recipe's: members of the push group may do anything,
any other valid user may pull.
"""

from __future__ import annotations

from dataclasses import dataclass

from .routes import ACTIONS, Action


@dataclass(frozen=True)
class Identity:
    """Who is asking. `user` is None for a request without credentials."""

    user: str | None
    groups: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.user is None


@dataclass(frozen=True)
class Rule:
    """One ACL entry. Empty `users`/`groups` match anyone; `authenticated` excludes anonymous."""

    actions: frozenset[Action]
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    authenticated: bool = True
    origin: str = "built-in"

    def matches(self, who: Identity) -> bool:
        if self.authenticated and who.anonymous:
            return False
        if self.users and who.user not in self.users:
            return False
        return not self.groups or bool(self.groups & who.groups)


@dataclass(frozen=True)
class Decision:
    """The answer and the rule that gave it (None: nothing matched, deny by default)."""

    allowed: bool
    rule: Rule | None

    @property
    def reason(self) -> str:
        return f"rule {self.rule.origin}" if self.rule else "no rule matched (deny by default)"


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


def decide(rules: tuple[Rule, ...], who: Identity, action: Action | None) -> Decision:
    """First rule matching `who` decides. `action` None (the /v2/ ping) needs only a match."""
    for rule in rules:
        if rule.matches(who):
            return Decision(action is None or action in rule.actions, rule)
    return Decision(False, None)
