"""ACL rules for machine identities, by tables: `claims:` and `issuer:` in the ACL file
(file:line errors) and in decisions, and a robot's rights as the intersection of its scopes
and its principal's."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.http.routes import ACTIONS, Action, Operation, classify
from proxy.policy.acl import bind_issuers, parse_acl_text
from proxy.policy.identity import Identity, RobotGrant
from proxy.policy.rules import Rule, authorize, decide

ACL = """\
- claims: {repository_owner: acme, ref: "refs/tags/v*"}
  repositories: [apps/app]
  actions: [pull, push]
- claims: {repository_owner: acme}
  repositories: ["apps/**"]
  actions: [pull]
- users: ["ci:acme/tool"]
  actions: [pull]
- groups: ["github:acme"]
  repositories: [shared/base]
  actions: [pull]
- groups: [pusher]
  actions: "*"
- users: [alice]
  repositories: ["${user}/**", team/app]
  actions: [pull, push]
- actions: [pull]
  repositories: [library/**]
"""
ISSUER = "https://token.actions.githubusercontent.com"
OTHER = "https://ghes.example.org"
PARSED, PROBLEMS = parse_acl_text(ACL, "acl.yaml")
RULES, BOUND = bind_issuers(PARSED, (ISSUER,))  # one issuer configured: claims rules are its

RELEASE = {"repository_owner": "acme", "ref": "refs/tags/v1.0", "repository": "acme/app"}
BRANCH = {**RELEASE, "ref": "refs/heads/main"}
STRANGER = {**RELEASE, "repository_owner": "evil"}


def token(claims: dict[str, Any], user: str = "ci:acme/app", groups: frozenset[str] = frozenset(),
          issuer: str = ISSUER) -> Identity:  # fmt: skip
    return Identity(user, groups, None, claims, issuer=issuer)


def test_the_acl_parses() -> None:
    assert PROBLEMS == [] and BOUND == []
    assert RULES[0].claims == (("repository_owner", ("acme",)), ("ref", ("refs/tags/v*",)))
    assert RULES[0].issuers == frozenset({ISSUER}) and PARSED[0].issuers == frozenset()


@pytest.mark.parametrize(
    ("who", "action", "repository", "allowed", "line"),
    [
        (token(RELEASE), "push", "apps/app", True, 1),
        (token(BRANCH), "push", "apps/app", False, 4),  # second rule: pull only
        (token(BRANCH), "pull", "apps/app", True, 4),
        (token(STRANGER), "pull", "apps/app", False, None),
        (token(RELEASE), "push", "apps/other", False, 4),
        (token(RELEASE, "ci:acme/tool"), "push", "apps/x", False, 4),  # before its users rule
        (token(RELEASE, "ci:acme/tool"), "pull", "any/thing", True, 7),
        (token({}, "ci:acme/tool"), "pull", "any/thing", True, 7),
        (token(STRANGER, groups=frozenset({"github:acme"})), "pull", "shared/base", True, 9),
        # the same claims from another trusted issuer: the rules are not for its tokens
        (token(RELEASE, "ghes:acme/app", issuer=OTHER), "push", "apps/app", False, None),
        (token(RELEASE, "ghes:acme/app", issuer=OTHER), "pull", "apps/app", False, None),
        # claims without an issuer (a caller that is no token): never a claims rule
        (token(RELEASE, issuer=None), "pull", "apps/app", False, None),  # type: ignore[arg-type]
        # a password user has no claims: claims rules never match
        (Identity("alice"), "pull", "apps/app", False, None),
        (Identity("alice"), "push", "alice/x", True, 14),
        (Identity("bob", frozenset({"pusher"})), "delete", "apps/app", True, 12),
    ],
)
def test_claims_rules_decide(
    who: Identity, action: Action, repository: str, allowed: bool, line: int | None
) -> None:
    decision = decide(RULES, who, action, repository)
    assert decision.allowed is allowed
    assert (decision.rule.origin if decision.rule else None) == (
        f"acl.yaml:{line}" if line else None
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("- claims: acme\n  actions: [pull]\n", 1, "claims: expected a mapping of claim names"),
        ("- claims: {}\n  actions: [pull]\n", 1, "claims: expected a mapping"),
        ("- actions: [pull]\n  claims: {'a b': x}\n", 2, "claims: invalid claim name 'a b'"),
        ("- actions: [pull]\n  claims: {ref: []}\n", 2, "claims: ref: expected a glob or a list"),
        ("- actions: [pull]\n  claims: {ref: {a: b}}\n", 2, "claims: ref: expected a glob"),
        ("- actions: [pull]\n  claims: {ref: null}\n", 2, "claims: ref: expected a glob"),
        ("- anonymous: true\n  claims: {a: b}\n  actions: [pull]\n", 1,
         "anonymous entries cannot name users, groups, claims or an issuer"),
        ("- anonymous: true\n  issuer: https://a.example\n  actions: [pull]\n", 1,
         "anonymous entries cannot name users, groups, claims or an issuer"),
        ("- actions: [pull]\n  issuer: http://a.example\n", 2,
         "issuer: expected an issuer's https:// URL, got 'http://a.example'"),
        ("- actions: [pull]\n  issuer: [https://a.example, 3]\n", 2,
         "issuer: expected a name or a list of names"),
    ],
)  # fmt: skip
def test_bad_claims_are_reported_with_file_and_line(text: str, line: int, message: str) -> None:
    rules, problems = parse_acl_text(text, "acl.yaml")
    assert rules == ()
    assert [(p.source, p.line) for p in problems] == [("acl.yaml", line)]
    assert problems[0].message.startswith(message), problems[0].message


@pytest.mark.parametrize(
    ("issuers", "problems"),
    [
        ((OTHER,), []),  # the only issuer: the claims rule is its
        ((OTHER, ISSUER), [
            (1, "claims: name the issuer these claims are from (several are configured)"),
        ]),
        ((ISSUER,), [(3, f"issuer: {OTHER} is not among oidc.issuers")]),
        ((), [(3, f"issuer: {OTHER} is not among oidc.issuers")]),
    ],
)  # fmt: skip
def test_claims_rules_are_bound_to_their_issuer(
    issuers: tuple[str, ...], problems: list[tuple[int, str]]
) -> None:
    text = f"- claims: {{a: b}}\n  actions: [pull]\n- issuer: {OTHER}\n  actions: [pull]\n"
    rules, found = bind_issuers(parse_acl_text(text, "acl.yaml")[0], issuers)
    assert [(p.source, p.line, p.message) for p in found] == [("acl.yaml", *p) for p in problems]
    assert rules[0].issuers == (frozenset(issuers) if len(issuers) == 1 else frozenset())
    assert rules[1].issuers == frozenset({OTHER})


def test_an_issuer_rule_matches_that_issuers_tokens_only() -> None:
    (rule,), _ = parse_acl_text(f"- issuer: {OTHER}\n  actions: [pull]\n", "acl.yaml")
    assert not rule.catch_all
    assert rule.matches_who(token({}, "ghes:x", issuer=OTHER))
    assert not rule.matches_who(token({}, "ci:x"))
    assert not rule.matches_who(Identity("alice"))


def test_claim_values_of_other_yaml_types_are_their_texts() -> None:
    (rule,), problems = parse_acl_text(
        "- claims: {ref_protected: true, run_attempt: 2, x: [a, false]}\n  actions: [pull]\n", "a"
    )
    assert problems == []
    assert rule.claims == (
        ("ref_protected", ("true",)),
        ("run_attempt", ("2",)),
        ("x", ("a", "false")),
    )


def test_a_claims_rule_is_no_catch_all() -> None:
    rules, problems = parse_acl_text(
        "- claims: {a: b}\n  actions: [pull]\n- actions: [push]\n", "acl.yaml"
    )
    assert problems == [] and len(rules) == 2


def test_names_from_tokens_may_have_colons_in_users_and_groups() -> None:
    rules, problems = parse_acl_text(
        '- users: ["ci:acme/app"]\n  groups: ["github:acme", "Domain Users"]\n  actions: [pull]\n',
        "acl.yaml",
    )
    assert problems == []
    assert rules[0].users == frozenset({"ci:acme/app"})


# Robots ----------------------------------------------------------------------------------------


def robot(
    repositories: tuple[str, ...], actions: set[Action], owner: str | None = "alice",
    groups: frozenset[str] = frozenset(),
) -> Identity:  # fmt: skip
    principal = owner or "robot$ci"
    grant = RobotGrant("ci", owner, principal, groups, repositories, frozenset(actions))
    return Identity("robot$ci", frozenset(), None, robot=grant)


@pytest.mark.parametrize(
    ("who", "action", "repository", "allowed"),
    [
        # within scope and within alice's rights
        (robot(("alice/**",), {"pull", "push"}), "push", "alice/app", True),
        (robot(("alice/**",), {"pull", "push"}), "pull", "alice/app", True),
        # the scope allows, alice does not: never more than the owner
        (robot(("**",), {"pull", "push", "delete"}), "push", "other/app", False),
        (robot(("**",), {"pull", "push", "delete"}), "delete", "alice/app", False),
        (robot(("**",), {"pull"}), "pull", "library/x", True),
        # alice may, the scope does not
        (robot(("alice/app",), {"pull", "push"}), "push", "alice/other", False),
        (robot(("alice/**",), {"pull"}), "push", "alice/app", False),
        (robot(("team/app",), {"push"}), "push", "team/app", True),
        # the owner's groups count (here: pusher may do anything)
        (robot(("**",), {"delete"}, "bob", frozenset({"pusher"})), "delete", "x/y", True),
        # ${user} is the owner's name, not the robot's
        (robot(("alice/*",), {"push"}), "push", "alice/app", True),
        (robot(("robot$ci/**",), {"push"}), "push", "alice/app", False),
        # no owner: the robot's own rights (valid user: pull of library/**)
        (robot(("**",), {"pull", "push"}, None), "pull", "library/x", True),
        (robot(("**",), {"pull", "push"}, None), "push", "library/x", False),
    ],
)
def test_a_robot_gets_its_scopes_intersected_with_its_principals_rights(
    who: Identity, action: Action, repository: str, allowed: bool
) -> None:
    assert decide(RULES, who, action, repository).allowed is allowed


def test_out_of_scope_says_so() -> None:
    decision = decide(RULES, robot(("alice/app",), {"pull"}), "push", "alice/app")
    assert not decision.allowed and decision.reason == "outside the scopes of robot ci"
    assert (
        decide(RULES, robot(("x",), {"pull"}), "push", "x").reason
        == "no rule matched (deny by default)"
    )


def test_robots_and_mounts_and_the_catalog() -> None:
    who = robot(("alice/**",), {"pull", "push"})
    mount = classify(
        "POST", "/v2/alice/app/blobs/uploads/", "mount=sha256:" + "a" * 64 + "&from=team/app"
    )
    assert isinstance(mount, Operation)
    verdict = authorize(RULES, who, mount)
    assert verdict.allowed and verdict.drop_mount  # alice may pull team/app; the robot may not
    assert decide(RULES, who, None).allowed  # the catalog: then filtered name by name
    assert [decide(RULES, who, "pull", n).allowed for n in ("alice/a", "team/app")] == [True, False]


def test_every_action_is_checked_against_the_scope() -> None:
    for action in ACTIONS:
        who = robot(("**",), {a for a in ACTIONS if a != action}, "bob", frozenset({"pusher"}))
        assert not decide(RULES, who, action, "x/y").allowed
    assert Rule(frozenset()).catch_all
