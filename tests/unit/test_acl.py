"""ACL parsing (every problem with file:line) and the decisions of the shipped examples."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from proxy.conf.config import load
from proxy.core.problems import ConfigError, read_text
from proxy.http.routes import Operation, classify
from proxy.policy.acl import parse_acl_text
from proxy.policy.identity import Identity
from proxy.policy.rules import Rule, authorize, decide, glob_regex

CONF = Path(__file__).resolve().parents[2] / "conf"


def rules_of(name: str) -> tuple[Rule, ...]:
    path = CONF / "acl" / name
    rules, problems = parse_acl_text(read_text(path), str(path))
    assert problems == []
    return rules


def user(name: str, *groups: str, ip: str = "192.0.2.10") -> Identity:
    return Identity(name, frozenset(groups), ipaddress.ip_address(ip))


ANON = Identity(None, address=ipaddress.ip_address("192.0.2.10"))
ALICE, BOB = user("alice"), user("bob")
PUSHER, ADMIN, CI = user("pat", "pusher"), user("root", "admin"), user("robot", "ci")


@pytest.mark.parametrize(
    ("example", "who", "action", "repository", "allowed"),
    [
        ("recipe.yaml", ALICE, "pull", "any/thing", True),
        ("recipe.yaml", ALICE, "push", "any/thing", False),
        ("recipe.yaml", ALICE, "delete", "any/thing", False),
        ("recipe.yaml", PUSHER, "push", "any/thing", True),
        ("recipe.yaml", PUSHER, "delete", "any/thing", True),
        ("recipe.yaml", ANON, "pull", "any/thing", False),
        ("namespaces.yaml", ALICE, "push", "alice/app", True),
        ("namespaces.yaml", ALICE, "push", "alice/team/app", True),
        ("namespaces.yaml", ALICE, "delete", "alice/app", True),
        ("namespaces.yaml", ALICE, "pull", "bob/app", False),
        ("namespaces.yaml", ALICE, "push", "bob/app", False),
        ("namespaces.yaml", ALICE, "push", "alicex/app", False),
        ("namespaces.yaml", ALICE, "pull", "library/ubuntu", True),
        ("namespaces.yaml", ALICE, "push", "library/ubuntu", False),
        ("namespaces.yaml", ADMIN, "push", "library/ubuntu", True),
        ("namespaces.yaml", ANON, "pull", "library/ubuntu", False),
        ("ci.yaml", CI, "push", "apps/web", True),
        ("ci.yaml", CI, "delete", "apps/web", False),
        ("ci.yaml", CI, "push", "tools/x", False),
        ("ci.yaml", ALICE, "push", "apps/web", False),
        ("ci.yaml", ALICE, "pull", "apps/web", True),
        ("ci.yaml", ADMIN, "delete", "apps/web", True),
        ("public.yaml", ANON, "pull", "public/base", True),
        ("public.yaml", ANON, "push", "public/base", False),
        ("public.yaml", ANON, "pull", "private/base", False),
        ("public.yaml", ALICE, "pull", "private/base", True),
        ("public.yaml", PUSHER, "push", "public/base", True),
        ("per-team-upstreams.yaml", user("a", "team-a"), "push", "team-a/x", True),
        ("per-team-upstreams.yaml", user("a", "team-a"), "push", "team-b/x", False),
        ("per-team-upstreams.yaml", user("a", "team-a", ip="127.0.0.1"), "pull", "library/x", True),
        ("per-team-upstreams.yaml", user("a", "team-a"), "pull", "library/x", False),
    ],
)
def test_shipped_examples(
    example: str, who: Identity, action: str, repository: str, allowed: bool
) -> None:
    decision = decide(rules_of(example), who, action, repository)  # type: ignore[arg-type]
    assert decision.allowed is allowed


def test_per_team_upstreams_route_requests() -> None:
    rules = rules_of("per-team-upstreams.yaml")
    assert decide(rules, user("a", "team-a"), "pull", "team-a/x").upstream == (
        "http://127.0.0.1:5001"
    )
    local = user("b", "team-b", ip="127.0.0.1")
    assert decide(rules, local, "pull", "library/x").upstream is None  # main upstream


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("alice/*", "alice/app", True),
        ("alice/*", "alice/team/app", False),
        ("alice/**", "alice/team/app", True),
        ("alice/**", "alice", False),
        ("a?c/x", "abc/x", True),
        ("a?c/x", "a/c/x", False),
        ("lib.x/*", "libxx/y", False),  # '.' is literal
        ("**", "anything/at/all", True),
    ],
)
def test_globs(pattern: str, name: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(name)) is matches


def test_placeholders_are_literal_never_wildcards() -> None:
    text = "- repositories: ['${user}/**']\n  actions: ['*']\n"
    rules, problems = parse_acl_text(text, "acl.yaml")
    assert problems == []
    assert decide(rules, user("*"), "push", "bob/app").allowed is False
    assert decide(rules, user("a?c"), "push", "abc/app").allowed is False
    assert decide(rules, user("a.c"), "push", "abc/app").allowed is False
    assert decide(rules, user("a.c"), "push", "a.c/app").allowed is True


def test_group_placeholder() -> None:
    text = "- repositories: ['${group}/**']\n  actions: [pull, push]\n"
    rules, _ = parse_acl_text(text, "acl.yaml")
    who = user("alice", "web", "data")
    assert decide(rules, who, "push", "web/site").allowed
    assert decide(rules, who, "push", "data/lake").allowed
    assert not decide(rules, who, "push", "ops/x").allowed
    assert not decide(rules, user("nogroups"), "push", "web/site").allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "acl.yaml:1: acl: empty ACL denies everything (probably a mistake)"),
        ("", "acl.yaml: acl: empty ACL file denies everything"),
        ("- actions: [pull, write]\n", "acl.yaml:1: actions: unknown action(s) ['write']"),
        ("- actions: pull\n", "acl.yaml:1: actions: expected a list"),
        ("- users: [a]\n", "acl.yaml:1: ACL entry without 'actions'"),
        ("- actions: []\n  who: [a]\n", "acl.yaml:2: unknown ACL key 'who'"),
        ("- actions: []\n  repositories: ['Upper/*']\n", "acl.yaml:2: repositories: bad glob"),
        ("- actions: []\n  repositories: ['a//b']\n", "acl.yaml:2: repositories: bad glob"),
        ("- actions: []\n  repositories: ['${owner}/x']\n", "unknown placeholder"),
        ("- actions: []\n  networks: [10.0.0.1/8]\n", "acl.yaml:2: networks: 10.0.0.1/8 has"),
        ("- actions: []\n  networks: [banana]\n", "acl.yaml:2: networks:"),
        ("- actions: []\n  anonymous: yes-please\n", "acl.yaml:2: anonymous: expected true"),
        ("- actions: []\n  upstream: ftp://x\n", "acl.yaml:2: upstream: expected http"),
        ("- actions: []\n  users: ['a b']\n", "acl.yaml:2: users: invalid name"),
        ("- anonymous: true\n  users: [a]\n  actions: [pull]\n", "cannot name users"),
        ("- anonymous: true\n  repositories: ['${user}/*']\n  actions: [pull]\n", "no ${user}"),
        ("- just a string\n", "acl.yaml:1: ACL entry: expected a mapping"),
        ("acl: {a: 1}\n", "acl.yaml:1: acl: expected a list"),
        ("other: []\n", "acl.yaml:1: no 'acl:' list in this file"),
        ("- actions: [pull\n", "acl.yaml:1: invalid YAML: a '[' opened on this line is not closed"),
        (
            "- actions: [pull]\n- groups: [pusher]\n  actions: ['*']\n",
            "acl.yaml:2: unreachable: rule acl.yaml:1 matches first",
        ),
    ],
)
def test_acl_problems(text: str, expected: str) -> None:
    _, problems = parse_acl_text(text, "acl.yaml")
    assert any(expected in str(p) for p in problems), [str(p) for p in problems]


def test_catch_all_for_anonymous_does_not_shadow_user_rules() -> None:
    text = "- anonymous: true\n  actions: [pull]\n- actions: ['*']\n"
    rules, problems = parse_acl_text(text, "acl.yaml")
    assert problems == [] and len(rules) == 2


def test_acl_inline_in_config_and_in_a_named_file(tmp_path: Path) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text("acl:\n  - users: [alice]\n    actions: [pull]\n")
    assert load(config).rules[0].origin == f"{config}:2"
    (tmp_path / "rules.yaml").write_text("acl:\n  - groups: [g]\n    actions: ['*']\n")
    config.write_text("acl: rules.yaml\n")
    loaded = load(config)
    assert loaded.acl_file == tmp_path / "rules.yaml"
    assert loaded.rules[0].origin == f"{tmp_path / 'rules.yaml'}:2"
    assert tmp_path / "rules.yaml" in loaded.watched_files()
    config.write_text("acl: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load(config)


def test_no_acl_means_the_recipe() -> None:
    rules = load(None).rules
    assert decide(rules, ALICE, "pull", "x").allowed
    assert not decide(rules, ALICE, "push", "x").allowed
    assert decide(rules, PUSHER, "delete", "x").allowed
    assert load(None, {"push_group": "deployers"}).rules[0].groups == {"deployers"}


def op(method: str, path: str, query: str = "") -> Operation:
    result = classify(method, path, query)
    assert isinstance(result, Operation)
    return result


DIGEST = "sha256:" + "e" * 64


@pytest.mark.parametrize(
    ("who", "source", "allowed", "drop"),
    [
        (ALICE, "alice/base", True, False),  # own namespace: mount kept
        (ALICE, "library/base", True, False),  # may pull library
        (ALICE, "bob/secret", True, True),  # cannot read bob's: mount dropped, upload goes on
        (BOB, "bob/secret", False, False),  # cannot push to alice/app at all
    ],
)
def test_cross_repository_mount_checks_both_repositories(
    who: Identity, source: str, allowed: bool, drop: bool
) -> None:
    rules = rules_of("namespaces.yaml")
    operation = op("POST", "/v2/alice/app/blobs/uploads/", f"mount={DIGEST}&from={source}")
    verdict = authorize(rules, who, operation)
    assert (verdict.allowed, verdict.drop_mount) == (allowed, drop)


def test_mount_across_upstreams_is_dropped() -> None:
    rules = rules_of("per-team-upstreams.yaml")
    who = user("a", "team-a", ip="127.0.0.1")
    operation = op("POST", "/v2/team-a/app/blobs/uploads/", f"mount={DIGEST}&from=library/x")
    verdict = authorize(rules, who, operation)
    assert verdict.allowed and verdict.drop_mount


def test_rules_keep_texts_of_their_own_not_the_yaml_trees() -> None:
    """A rule's names and globs are copies: the text a node holds shares memory with the node
    tree, and kept, would keep the freed tree's memory resident (one text per block)."""
    import yaml

    from proxy.core.problems import compose_yaml, construct

    text = 'acl:\n  - {users: [alice], repositories: ["apps/**", "x\\ud800y"], actions: [pull]}\n'
    node = compose_yaml(text, "acl.yaml")
    assert isinstance(node, yaml.MappingNode)
    [rule_node] = node.value[0][1].value
    values = {k.value: v for k, v in rule_node.value}
    kept = construct(values["repositories"])
    assert kept == ["apps/**", "x\ud800y"]  # a lone surrogate too, as YAML escapes it
    assert all(
        mine is not theirs
        for mine, theirs in zip(kept, (n.value for n in values["repositories"].value), strict=True)
    )
    user = values["users"].value[0]
    assert construct(user) == "alice" and construct(user) is not user.value
    claims = compose_yaml("{project: apps/web, ref: [main, rel-1]}\n", "acl.yaml")
    assert isinstance(claims, yaml.MappingNode)
    constructed = construct(claims)  # a mapping: the safe constructor's way, copies too
    assert constructed == {"project": "apps/web", "ref": ["main", "rel-1"]}
    texts = [*constructed, constructed["project"], *constructed["ref"]]
    nodes = [claims.value[0][0], claims.value[1][0], claims.value[0][1], *claims.value[1][1].value]
    assert all(mine is not node.value for mine, node in zip(texts, nodes, strict=True))


def test_rules_share_their_sets_of_actions_and_of_names() -> None:
    """Eight sets of actions exist; 10,000 rules hold them, not a set and texts each. Rules
    of one file that name the same users or groups hold one set of them."""
    from proxy.http.routes import ACTIONS

    rules, problems = parse_acl_text(
        "acl:\n"
        "  - {users: [a], actions: [push, pull]}\n"
        "  - {users: [b], actions: [pull, push]}\n"
        "  - {users: [c], actions: ['*']}\n"
        "  - {users: [d], actions: [pull, push, delete]}\n"
        "  - {users: [e], actions: []}\n"
        "  - {groups: [dev, ops], repositories: [x/**], actions: [pull]}\n"
        "  - {groups: [ops, dev], repositories: [y/**], actions: [pull]}\n"
        "  - {users: [a], repositories: [z/**], actions: [pull]}\n",
        "acl.yaml",
    )
    assert rules[5].groups is rules[6].groups and rules[7].users is rules[0].users
    assert not problems
    assert rules[0].actions == {"pull", "push"} and rules[0].actions is rules[1].actions
    assert rules[2].actions == set(ACTIONS) and rules[2].actions is rules[3].actions
    assert rules[4].actions == frozenset()
    assert all(any(a is b for b in ACTIONS) for r in rules for a in r.actions)
    assert not hasattr(rules[0], "__dict__")  # slots: no dict per rule
