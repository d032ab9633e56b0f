"""Token server mode's pure parts (proxy.tokenserver.scopes): scopes read as the distribution
spec writes them, and granted as the ACL's subset."""

from __future__ import annotations

import pytest

from proxy.policy.identity import Identity
from proxy.policy.rules import Rule, recipe_rules
from proxy.tokenserver.scopes import Scope, granted, parse_scopes


def test_scope_parsing_drops_what_it_cannot_name() -> None:
    scopes = parse_scopes(
        ["repository:a/b:pull,push repository(plugin):c:pull", "repository:Bad:pull",
         "repository:x%2Fy:pull", "registry:catalog:*", "something:else:pull", "repository:a"]
    )  # fmt: skip
    assert [str(s) for s in scopes] == [
        "repository:a/b:pull,push",
        "repository(plugin):c:pull",
        "registry:catalog:*",
    ]


def test_scopes_are_separated_by_ascii_spaces_only() -> None:
    """Not by NBSP, NEL or U+2028, which str.split() takes: one scope, malformed, dropped."""
    for space in ("\u00a0", "\x85", "\u2028", "\t"):
        assert parse_scopes([f"repository:a:pull{space}repository:b:push"]) == []
    assert [str(s) for s in parse_scopes(["repository:a:pull  repository:b:push"])] == [
        "repository:a:pull",
        "repository:b:push",
    ]


@pytest.mark.parametrize(
    ("groups", "actions", "expected"),
    [
        ((), ("pull", "push"), ("pull",)),
        (("pusher",), ("pull", "push", "*"), ("pull", "push", "*")),
        ((), ("*",), None),  # "*" needs every action
        (("pusher",), ("fly",), None),
    ],
)
def test_granted_is_the_acl_subset(
    groups: tuple[str, ...], actions: tuple[str, ...], expected: tuple[str, ...] | None
) -> None:
    who = Identity("u", frozenset(groups))
    result = granted(recipe_rules("pusher"), who, Scope("repository", "a", actions), frozenset())
    assert (result.scope.actions if result else None) == expected


def test_a_token_never_grants_a_slashed_user_anothers_namespace() -> None:
    """Token mode decides with the same policy: `alice/sub` gets nothing under alice/."""
    rules = (Rule(frozenset({"pull", "push"}), repositories=("${user}/**",)),)
    for user, expected in (("alice/sub", None), ("alice", ("pull", "push"))):
        scope = parse_scopes(["repository:alice/sub/app:pull,push"])[0]
        got = granted(rules, Identity(user), scope, frozenset())
        assert (got and got.scope.actions) == expected


def test_a_token_ends_with_the_credential_it_was_issued_for() -> None:
    """A robot's, or a workload token's, end caps the registry token's `exp`: it is never
    taken past what it was issued for (the registry takes it REGISTRY_LEEWAY seconds more)."""
    from proxy.policy.identity import Identity
    from proxy.tokenserver.scopes import REGISTRY_LEEWAY, TokenSettings, claims

    settings = TokenSettings("iss", "svc", None, None, expiry=300)  # type: ignore[arg-type]
    assert claims(settings, Identity("alice"), [], 1000)["exp"] == 1300
    ending = Identity("robot$ci", expires=1100)
    assert claims(settings, ending, [], 1000)["exp"] + REGISTRY_LEEWAY == 1100
    assert claims(settings, Identity("ci:x", expires=5000), [], 1000)["exp"] == 1300
