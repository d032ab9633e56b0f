"""Unit tables for proxy.policy.rules: the Apache recipe's rules and first-match decisions;
properties of the RuleSet's indexes (by repository and by caller), which find the same
deciding rule as reading every rule in order, and of proxy.policy.acl's unreachable-rule check."""

from __future__ import annotations

import ipaddress
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.routes import ACTIONS, Operation, classify
from proxy.policy import acl
from proxy.policy import rules as rules_module
from proxy.policy.identity import Identity
from proxy.policy.rules import (
    Decision,
    Rule,
    RuleSet,
    Verdict,
    authorize,
    decide,
    first_match,
    recipe_rules,
)

ALL = frozenset(ACTIONS)
PULL = frozenset({"pull"})

ANONYMOUS = Identity(None)
VALID = Identity("alice")
PUSHER = Identity("bob", frozenset({"pusher"}))
OTHER_GROUPS = Identity("carol", frozenset({"readers", "devs", "pushers", "Pusher"}))
ADMIN = Identity("dave", frozenset({"admins"}))

WHO = {
    "anonymous": ANONYMOUS,
    "valid-user": VALID,
    "pusher": PUSHER,
    "other-groups": OTHER_GROUPS,
    "admin": ADMIN,
}

# who -> {action: (allowed, origin of the deciding rule or None)} under recipe_rules("pusher")
RECIPE = {
    "anonymous": {
        None: (False, None),
        "pull": (False, None),
        "push": (False, None),
        "delete": (False, None),
    },
    "valid-user": {
        None: (True, "built-in: valid-user"),
        "pull": (True, "built-in: valid-user"),
        "push": (False, "built-in: valid-user"),
        "delete": (False, "built-in: valid-user"),
    },
    "pusher": {
        None: (True, "built-in: group pusher"),
        "pull": (True, "built-in: group pusher"),
        "push": (True, "built-in: group pusher"),
        "delete": (True, "built-in: group pusher"),
    },
}
RECIPE["other-groups"] = RECIPE["valid-user"]
RECIPE["admin"] = RECIPE["valid-user"]


@pytest.mark.parametrize(
    ("who", "action", "allowed", "origin"),
    [
        pytest.param(who, action, allowed, origin, id=f"{who}-{action}")
        for who, table in RECIPE.items()
        for action, (allowed, origin) in table.items()
    ],
)
@pytest.mark.parametrize("repository", [None, "library/ubuntu"])
def test_recipe(
    who: str, action: str | None, allowed: bool, origin: str | None, repository: str | None
) -> None:
    decision = decide(recipe_rules("pusher"), WHO[who], action, repository)  # type: ignore[arg-type]
    assert decision.allowed is allowed
    assert (decision.rule.origin if decision.rule else None) == origin
    if origin is not None:
        assert decision.reason == f"rule {origin}"
    else:
        assert decision.reason == "no rule matched (deny by default)"


def test_recipe_rules_shape() -> None:
    rules = recipe_rules("pusher")
    assert [r.origin for r in rules] == ["built-in: group pusher", "built-in: valid-user"]
    assert rules[0].actions == ALL and rules[0].groups == frozenset({"pusher"})
    assert rules[1].actions == PULL and not rules[1].groups and not rules[1].users
    assert not any(r.anonymous for r in rules)
    assert recipe_rules("pusher") == rules


@pytest.mark.parametrize(
    ("who", "action", "allowed"),
    [
        (Identity("dave", frozenset({"admins"})), "push", True),
        (Identity("dave", frozenset({"admins"})), "delete", True),
        (Identity("bob", frozenset({"pusher"})), "push", False),
        (Identity("bob", frozenset({"pusher"})), "delete", False),
        (Identity("bob", frozenset({"pusher"})), "pull", True),
        (Identity("admins"), "push", False),  # a user named like the group is not a member
        (ANONYMOUS, "pull", False),
    ],
)
def test_custom_push_group(who: Identity, action: str, allowed: bool) -> None:
    decision = decide(recipe_rules("admins"), who, action, "a")  # type: ignore[arg-type]
    assert decision.allowed is allowed


def test_custom_push_group_origin() -> None:
    decision = decide(recipe_rules("admins"), ADMIN, "push", "a")
    assert decision.reason == "rule built-in: group admins"


# --------------------------------------------------------------------------------------------
# First match, hand-built rules
# --------------------------------------------------------------------------------------------

USER_ALICE_PULL = Rule(PULL, users=frozenset({"alice"}), origin="alice-pull")
GROUP_PUSHER_ALL = Rule(ALL, groups=frozenset({"pusher"}), origin="pusher-all")
EVERYONE_PULL = Rule(PULL, origin="everyone-pull")
DENY_MALLORY = Rule(frozenset(), users=frozenset({"mallory"}), origin="deny-mallory")
ANON_PULL = Rule(PULL, anonymous=True, origin="anon-pull")
PUBLIC_PULL = Rule(PULL, repositories=("public/**",), origin="public-pull")
OWN_ALL = Rule(ALL, repositories=("${user}/*",), origin="own")
TEAM_PUSH = Rule(frozenset({"pull", "push"}), repositories=("${group}/**",), origin="team")
LAN_ALL = Rule(ALL, networks=(ipaddress.ip_network("10.0.0.0/8"),), origin="lan")

ALICE_PUSHER = Identity("alice", frozenset({"pusher"}))
BOB_PUSHER = Identity("bob", frozenset({"pusher"}))
MALLORY_PUSHER = Identity("mallory", frozenset({"pusher"}))


@pytest.mark.parametrize(
    ("rules", "who", "action", "repository", "allowed", "origin"),
    [
        pytest.param((), ANONYMOUS, "pull", "a", False, None, id="empty-anonymous"),
        pytest.param((), VALID, "pull", "a", False, None, id="empty-user-pull"),
        pytest.param((), PUSHER, "push", "a", False, None, id="empty-pusher-push"),
        pytest.param((), PUSHER, "delete", "a", False, None, id="empty-pusher-delete"),
        pytest.param(
            (USER_ALICE_PULL, GROUP_PUSHER_ALL), ALICE_PUSHER, "push", "a", False, "alice-pull",
            id="user-rule-before-group-rule-decides",
        ),
        pytest.param(
            (USER_ALICE_PULL, GROUP_PUSHER_ALL), ALICE_PUSHER, "pull", "a", True, "alice-pull",
            id="user-rule-grants-its-actions",
        ),
        pytest.param(
            (USER_ALICE_PULL, GROUP_PUSHER_ALL), BOB_PUSHER, "push", "a", True, "pusher-all",
            id="other-user-falls-to-group-rule",
        ),
        pytest.param(
            (GROUP_PUSHER_ALL, USER_ALICE_PULL), ALICE_PUSHER, "push", "a", True, "pusher-all",
            id="group-rule-first",
        ),
        pytest.param(
            (USER_ALICE_PULL,), VALID, "delete", "a", False, "alice-pull",
            id="matched-rule-without-the-action-denies",
        ),
        pytest.param(
            (USER_ALICE_PULL,), Identity("alicia"), "pull", "a", False, None,
            id="user-names-match-exactly",
        ),
        pytest.param(
            (DENY_MALLORY, GROUP_PUSHER_ALL), MALLORY_PUSHER, "pull", "a", False, "deny-mallory",
            id="empty-actions-is-an-explicit-deny",
        ),
        pytest.param(
            (DENY_MALLORY, GROUP_PUSHER_ALL), BOB_PUSHER, "delete", "a", True, "pusher-all",
            id="explicit-deny-only-for-its-user",
        ),
        pytest.param(
            (EVERYONE_PULL, GROUP_PUSHER_ALL), PUSHER, "push", "a", False, "everyone-pull",
            id="catch-all-first-shadows",
        ),
        pytest.param(
            (GROUP_PUSHER_ALL,), Identity("x", frozenset({"pusher2"})), "push", "a", False, None,
            id="group-names-match-exactly",
        ),
        pytest.param(
            (EVERYONE_PULL,), ANONYMOUS, "pull", "a", False, None,
            id="user-rules-never-match-anonymous",
        ),
        pytest.param(
            (ANON_PULL, EVERYONE_PULL), ANONYMOUS, "pull", "a", True, "anon-pull",
            id="anonymous-rule",
        ),
        pytest.param(
            (ANON_PULL,), ANONYMOUS, "push", "a", False, "anon-pull",
            id="anonymous-rule-actions",
        ),
        pytest.param(
            (ANON_PULL,), VALID, "pull", "a", False, None,
            id="anonymous-rule-does-not-match-users",
        ),
        pytest.param(
            (PUBLIC_PULL,), VALID, "pull", "public/a/b", True, "public-pull", id="glob-doublestar",
        ),
        pytest.param(
            (PUBLIC_PULL,), VALID, "pull", "publicity/a", False, None, id="glob-prefix-only",
        ),
        pytest.param(
            (PUBLIC_PULL, EVERYONE_PULL), VALID, "pull", "private/a", True, "everyone-pull",
            id="repository-mismatch-falls-through",
        ),
        pytest.param((OWN_ALL,), VALID, "delete", "alice/app", True, "own", id="user-placeholder"),
        pytest.param((OWN_ALL,), VALID, "pull", "alice/a/b", False, None, id="star-one-level"),
        pytest.param((OWN_ALL,), VALID, "pull", "bob/app", False, None, id="not-own"),
        pytest.param((OWN_ALL,), Identity("*"), "push", "x/app", False, None, id="user-star"),
        pytest.param(
            (TEAM_PUSH,), Identity("u", frozenset({"devs", "ops"})), "push", "ops/x/y", True,
            "team", id="group-placeholder-any-group",
        ),
        pytest.param(
            (TEAM_PUSH,), Identity("u", frozenset({"devs"})), "push", "ops/x", False, None,
            id="group-placeholder-not-member",
        ),
        pytest.param(
            (LAN_ALL,), Identity("u", address=ipaddress.ip_address("10.1.2.3")), "push", "a",
            True, "lan", id="network-inside",
        ),
        pytest.param(
            (LAN_ALL,), Identity("u", address=ipaddress.ip_address("11.0.0.1")), "push", "a",
            False, None, id="network-outside",
        ),
        pytest.param((LAN_ALL,), VALID, "push", "a", False, None, id="network-unknown-address"),
    ],
)  # fmt: skip
def test_first_match(
    rules: tuple[Rule, ...],
    who: Identity,
    action: str,
    repository: str,
    allowed: bool,
    origin: str | None,
) -> None:
    decision = decide(rules, who, action, repository)  # type: ignore[arg-type]
    assert decision.allowed is allowed
    assert (decision.rule.origin if decision.rule else None) == origin


@pytest.mark.parametrize("who", list(WHO.values()), ids=list(WHO))
@pytest.mark.parametrize("action", ["pull", "push", "delete"])
def test_empty_rules_deny(who: Identity, action: str) -> None:
    decision = decide((), who, action, "library/ubuntu")  # type: ignore[arg-type]
    assert decision == Decision(False, None)
    assert decision.reason == "no rule matched (deny by default)"


@pytest.mark.parametrize(
    ("rules", "who", "allowed"),
    [
        pytest.param((), ANONYMOUS, False, id="empty-anonymous"),
        pytest.param(recipe_rules("pusher"), ANONYMOUS, False, id="recipe-anonymous"),
        pytest.param((ANON_PULL,), ANONYMOUS, True, id="anonymous-rule"),
        pytest.param(
            (Rule(frozenset(), anonymous=True),), ANONYMOUS, False, id="anonymous-empty-actions"
        ),
        pytest.param(recipe_rules("pusher"), VALID, True, id="recipe-user"),
    ],
)
def test_catalog_access(rules: tuple[Rule, ...], who: Identity, allowed: bool) -> None:
    """`action` None (the catalog) asks whether the caller may use the registry at all."""
    assert decide(rules, who, None).allowed is allowed


@pytest.mark.parametrize(
    "decision",
    [
        decide((), VALID, None),
        decide((), VALID, "pull", "a"),
        decide(recipe_rules("pusher"), VALID, None),
        decide(recipe_rules("pusher"), PUSHER, "push", "a"),
        decide(recipe_rules("pusher"), VALID, "push", "a"),
    ],
    ids=["empty-catalog", "empty-pull", "recipe-catalog", "recipe-push", "recipe-denied-push"],
)
def test_reason_agrees_with_the_answer(decision: Decision) -> None:
    """An allowed request never says it was denied by default, and vice versa."""
    if decision.allowed:
        assert "deny" not in decision.reason
    else:
        assert decision.rule is not None or "deny by default" in decision.reason


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (None, "no rule matched (deny by default)"),
        (Rule(PULL, origin="conf/acl.yaml:12"), "rule conf/acl.yaml:12"),
        (Rule(PULL), "rule built-in"),
    ],
)
def test_decision_reason(rule: Rule | None, reason: str) -> None:
    assert Decision(rule is not None, rule).reason == reason
    assert Decision(False, rule).reason == reason


@pytest.mark.parametrize(
    ("who", "anonymous"),
    [(ANONYMOUS, True), (VALID, False), (Identity(""), False), (PUSHER, False)],
)
def test_identity_anonymous(who: Identity, anonymous: bool) -> None:
    assert who.anonymous is anonymous


# --------------------------------------------------------------------------------------------
# authorize(): classify -> decide, as the request path uses them
# --------------------------------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


def op(method: str, path: str, query: str = "") -> Operation:
    result = classify(method, path, query)
    assert isinstance(result, Operation), result
    return result


REQUESTS = {
    "ping": op("GET", "/v2/"),
    "catalog": op("GET", "/v2/_catalog"),
    "pull": op("GET", "/v2/a/manifests/latest"),
    "push": op("PUT", "/v2/a/manifests/latest"),
    "upload": op("POST", "/v2/a/blobs/uploads/"),
    "delete": op("DELETE", f"/v2/a/blobs/{DIGEST}"),
}

# who -> requests allowed under the recipe (everything else refused)
RECIPE_ALLOWED = {
    "anonymous": set(),
    "valid-user": {"ping", "catalog", "pull"},
    "pusher": set(REQUESTS),
    "other-groups": {"ping", "catalog", "pull"},
}


@pytest.mark.parametrize(
    ("who", "request_name"),
    [(who, name) for who in RECIPE_ALLOWED for name in REQUESTS],
)
def test_authorize_recipe(who: str, request_name: str) -> None:
    verdict = authorize(recipe_rules("pusher"), WHO[who], REQUESTS[request_name])
    assert verdict.allowed is (request_name in RECIPE_ALLOWED[who])
    assert verdict.drop_mount is False


def test_anonymous_ping_is_challenged_even_with_anonymous_rules() -> None:
    verdict = authorize((ANON_PULL,), ANONYMOUS, REQUESTS["ping"])
    assert verdict == Verdict(Decision(False, None))
    assert authorize((ANON_PULL,), ANONYMOUS, REQUESTS["pull"]).allowed is True


@pytest.mark.parametrize(
    ("rules", "who", "source", "allowed", "drop_mount"),
    [
        pytest.param(recipe_rules("pusher"), PUSHER, "other/repo", True, False, id="pusher"),
        pytest.param(
            recipe_rules("pusher"), VALID, "other/repo", False, False, id="no-push-no-mount"
        ),
        pytest.param(
            (OWN_ALL,), VALID, "bob/secret", True, True, id="no-pull-on-source-drops-mount",
        ),
        pytest.param((OWN_ALL,), VALID, "alice/other", True, False, id="own-source"),
        pytest.param(
            (Rule(ALL, repositories=("alice/*",), upstream="http://r1:5000"),
             Rule(PULL, repositories=("shared/*",), upstream="http://r2:5000")),
            VALID, "shared/x", True, True, id="different-upstreams-drop-mount",
        ),
    ],
)  # fmt: skip
def test_authorize_mount(
    rules: tuple[Rule, ...], who: Identity, source: str, allowed: bool, drop_mount: bool
) -> None:
    target = "alice/app"
    operation = op("POST", f"/v2/{target}/blobs/uploads/", f"mount={DIGEST}&from={source}")
    assert operation.mount_from == source
    verdict = authorize(rules, who, operation)
    assert verdict.allowed is allowed
    assert verdict.drop_mount is drop_mount


# --------------------------------------------------------------------------------------------
# Placeholders stand for one repository path component, whatever the identity source
# --------------------------------------------------------------------------------------------

OWN_NAMESPACE = Rule(ALL, repositories=("${user}/**",), origin="own-namespace")
TEAM_NAMESPACE = Rule(ALL, repositories=("${group}/**",), origin="team-namespace")
PREFIXED = Rule(ALL, repositories=("home-${user}/*", "${user}.cache"), origin="prefixed")


@pytest.mark.parametrize(
    ("rule", "who", "repository", "matches"),
    [
        (OWN_NAMESPACE, Identity("alice"), "alice/app", True),
        (OWN_NAMESPACE, Identity("alice.smith"), "alice.smith/app", True),
        (OWN_NAMESPACE, Identity("a__b-c"), "a__b-c/x/y", True),
        # The issue: `alice/sub` would make `${user}/**` read `alice/sub/**`, inside alice/.
        (OWN_NAMESPACE, Identity("alice/sub"), "alice/sub/app", False),
        (OWN_NAMESPACE, Identity("alice/sub"), "alice/sub", False),
        (OWN_NAMESPACE, Identity("alice/../bob"), "bob/app", False),
        (OWN_NAMESPACE, Identity("alice/"), "alice/app", False),
        (OWN_NAMESPACE, Identity("*"), "bob/app", False),
        (OWN_NAMESPACE, Identity("**"), "bob/app", False),
        (OWN_NAMESPACE, Identity("?"), "b/app", False),
        (OWN_NAMESPACE, Identity("Alice"), "alice/app", False),
        (OWN_NAMESPACE, Identity(""), "/app", False),
        (OWN_NAMESPACE, Identity("a" * 256), "a" * 256 + "/x", False),
        (PREFIXED, Identity("alice"), "home-alice/app", True),
        (PREFIXED, Identity("alice/x"), "home-alice/x", False),
        (PREFIXED, Identity("x/home-bob"), "home-x/home-bob.cache", False),
        (TEAM_NAMESPACE, Identity("u", frozenset({"team"})), "team/app", True),
        (TEAM_NAMESPACE, Identity("u", frozenset({"team/sub"})), "team/sub/app", False),
        (TEAM_NAMESPACE, Identity("u", frozenset({"Domain Users"})), "domain users/x", False),
        # a bad group is passed by; the user's other groups still count
        (TEAM_NAMESPACE, Identity("u", frozenset({"team/sub", "ops"})), "ops/app", True),
        (TEAM_NAMESPACE, Identity("u", frozenset({"team/sub", "ops"})), "team/sub/app", False),
    ],
)
def test_a_placeholder_is_one_path_component(
    rule: Rule, who: Identity, repository: str, matches: bool
) -> None:
    assert rule.matches_repository(who, repository) is matches


def test_alice_sub_cannot_push_into_alices_namespace() -> None:
    """From any identity source (htpasswd refuses the name; LDAP, a token client or a future
    backend might not): the policy itself never lets the name cross into alice/."""
    rules = (OWN_NAMESPACE, EVERYONE_PULL)
    alice, intruder = Identity("alice"), Identity("alice/sub")
    for repository in ("alice/sub/app", "alice/app", "alice/sub"):
        assert not decide(rules, intruder, "push", repository).allowed
    assert decide(rules, alice, "push", "alice/sub/app").allowed
    upload = classify("POST", "/v2/alice/sub/app/blobs/uploads/")
    assert isinstance(upload, Operation)
    assert not authorize(rules, intruder, upload).allowed
    assert authorize(rules, alice, upload).allowed


# --------------------------------------------------------------------------------------------
# Compiled globs and the rule index agree with the plain, linear reading
# --------------------------------------------------------------------------------------------

_COMPONENTS = st.sampled_from(["alice", "bob", "team", "ci", "x", "library", "a.b", "Domain Users"])
_PIECES = st.sampled_from(["alice", "team", "library", "x", "*", "**", "?", "${user}", "${group}"])


@st.composite
def globs(draw: st.DrawFn) -> str:
    components = draw(st.lists(st.lists(_PIECES, min_size=1, max_size=2), min_size=1, max_size=3))
    return "/".join("".join(parts) for parts in components)


@st.composite
def callers(draw: st.DrawFn) -> Identity:
    user = draw(st.one_of(st.none(), _COMPONENTS, st.sampled_from(["alice/sub", "*", "Bob"])))
    groups = frozenset(draw(st.lists(_COMPONENTS, max_size=3)))
    return Identity(user, groups if user is not None else frozenset())


_NAMES = st.lists(st.sampled_from(["alice", "bob", "team", "ci", "x", "library", "a.b"]),
                  min_size=1, max_size=3).map("/".join)  # fmt: skip


@given(globs(), callers(), _NAMES)
def test_a_compiled_glob_reads_as_the_filled_in_pattern(
    pattern: str, who: Identity, name: str
) -> None:
    from proxy.policy.rules import Glob, _expand, glob_regex

    expected = any(glob_regex(text).fullmatch(name) for text in _expand(pattern, who))
    assert Glob(pattern).matches(who, name) == expected


@given(st.lists(globs(), min_size=1, max_size=12), callers(), _NAMES)
def test_the_rule_index_decides_as_the_linear_scan(
    patterns: list[str], who: Identity, repository: str
) -> None:
    from proxy.policy.rules import RuleSet, first_match

    rules = tuple(
        Rule(frozenset({"pull"}), repositories=(p,), anonymous=who.anonymous, origin=f"r{i}")
        for i, p in enumerate(patterns)
    )
    assert first_match(RuleSet(rules), who, repository) == first_match(rules, who, repository)


def test_ten_thousand_rules_are_indexed_by_their_first_component() -> None:
    from proxy.policy.rules import RuleSet

    rules = RuleSet(
        Rule(frozenset({"pull"}), repositories=(f"team{i:05d}/**",), origin=f"r{i}")
        for i in range(10_000)
    )
    who = Identity("alice")
    assert [r.origin for r in rules.candidates(who, "team04242/app")] == ["r4242"]
    assert decide(rules, who, "pull", "team04242/app").rule is rules[4242]
    assert not decide(rules, who, "pull", "elsewhere/app").allowed


# The RuleSet's indexes against the linear reading, on random rule lists

USERS = ["alice", "bob", "carol"]
GROUPS = ["devs", "ops", "Domain Users"]
ISSUERS = ["https://a.example", "https://b.example"]
PIECES = ["alice", "devs", "lib", "*", "**", "?", "${user}", "${group}"]
NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24")]
ADDRESSES = [None, ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("192.168.1.7")]


def subsets(names: list[str]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(names), max_size=2)


# Built once: a strategy made inside a composite is built and validated again at every draw,
# which cost more than the draws themselves (the examples drawn are the same).
INDEX_GLOBS = st.lists(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=2), min_size=1, max_size=3
).map(lambda parts: "/".join("".join(p) for p in parts))
RULE_WHO = st.fixed_dictionaries(
    {
        "users": subsets(USERS),
        "groups": subsets(GROUPS),
        "issuers": subsets(ISSUERS),
        "claims": st.sampled_from([(), (("ref", ("main",)),), (("ref", ("v*",)),)]),
    }
)
ACTIONS = st.frozensets(st.sampled_from(["pull", "push", "delete"]))
RULE_REPOSITORIES = st.lists(INDEX_GLOBS, max_size=2)
RULE_TAGS = st.lists(st.sampled_from(["v*", "latest", "v1.?"]), max_size=2)
RULE_NETWORKS = st.lists(st.sampled_from(NETWORKS), max_size=1)


@st.composite
def rules(draw: st.DrawFn, position: int) -> Rule:
    anonymous = draw(st.booleans())
    who = {} if anonymous else draw(RULE_WHO)
    return Rule(
        draw(ACTIONS),
        anonymous=anonymous,
        repositories=tuple(draw(RULE_REPOSITORIES)),
        tags=tuple(draw(RULE_TAGS)),
        networks=tuple(draw(RULE_NETWORKS)),
        origin=f"acl.yaml:{position + 1}",
        **who,
    )


@st.composite
def rule_lists(draw: st.DrawFn) -> tuple[Rule, ...]:
    count = draw(st.integers(min_value=0, max_value=14))
    return tuple(draw(rules(i)) for i in range(count))


@st.composite
def index_callers(draw: st.DrawFn) -> Identity:
    address = draw(st.sampled_from(ADDRESSES))
    user = draw(st.one_of(st.none(), st.sampled_from([*USERS, "dave", "a/b"])))
    if user is None:
        return Identity(None, address=address)
    issuer = draw(st.one_of(st.none(), st.sampled_from(ISSUERS)))
    claims = {"ref": draw(st.sampled_from(["main", "v1", "dev"]))} if issuer else {}
    groups = draw(st.frozensets(st.sampled_from([*GROUPS, "other"]), max_size=3))
    return Identity(user, groups, address, claims=claims, issuer=issuer)


REPOSITORIES = st.one_of(
    st.none(),
    st.lists(st.sampled_from(["alice", "bob", "devs", "lib", "x", "a.b"]), min_size=1,
             max_size=3).map("/".join),
)  # fmt: skip
TAGS = st.one_of(st.none(), st.sampled_from(["v1", "latest", "v1.2", "dev"]))


@settings(max_examples=150)
@given(rule_lists(), index_callers(), REPOSITORIES, TAGS, st.sampled_from([16, 0]))
def test_the_indexed_rule_set_finds_the_rule_the_linear_scan_finds(
    listed: tuple[Rule, ...], who: Identity, repository: str | None, tag: str | None, few: int
) -> None:
    """`few` 0: every caller with groups has their rules merged and kept, as one in more
    groups than `FEW_GROUPS` has; asked twice, the second answer is the kept merge's."""
    expected = first_match(listed, who, repository, tag)
    indexed = RuleSet(listed)
    with mock.patch.object(rules_module, "FEW_GROUPS", few):
        for _ in range(2):
            assert first_match(indexed, who, repository, tag) is expected


@settings(max_examples=100)
@given(rule_lists(), index_callers(), st.sampled_from([16, 0]))
def test_may_use_the_registry_is_decided_alike_indexed_or_not(
    listed: tuple[Rule, ...], who: Identity, few: int
) -> None:
    """`decide` with no action (the ping, the catalog): valid users by their first rule,
    anonymous callers by any rule for them that grants something."""
    indexed = RuleSet(listed)
    with mock.patch.object(rules_module, "FEW_GROUPS", few):
        for _ in range(2):
            assert decide(indexed, who, None) == decide(listed, who, None)


@settings(max_examples=100)
@given(rule_lists())
def test_the_unreachable_check_finds_what_comparing_every_earlier_rule_finds(
    listed: tuple[Rule, ...],
) -> None:
    def every_earlier(found: list[Rule]) -> list[str]:
        problems: list[str] = []
        catch_all: dict[bool, Rule] = {}
        for index, rule in enumerate(found):
            earlier = catch_all.get(rule.anonymous)
            if earlier is not None:
                problems.append(str(acl._problem(rule, f"unreachable: rule {earlier.origin} "
                                                       "matches first")))  # fmt: skip
            elif rule.tags:
                problems += [str(p) for p in acl._dead_tags(rule, found[:index])]
            elif rule.catch_all:
                catch_all[rule.anonymous] = rule
        return problems

    assert [str(p) for p in acl._unreachable(list(listed))] == every_earlier(list(listed))


def test_a_caller_in_many_groups_finds_their_rule_among_ten_thousand() -> None:
    many = RuleSet(
        Rule(frozenset({"pull"}), groups=frozenset({f"team{i:05d}"}), origin=f"r{i}")
        for i in range(10_000)
    )
    who = Identity("alice", frozenset({f"g{i}" for i in range(1_000)} | {"team09999"}))
    assert [r.origin for r in many.candidates(who, None)] == ["r9999"]
    assert decide(many, who, None).rule is many[9_999]
    assert decide(many, Identity("bob", frozenset({"g1"})), None).rule is None


def test_a_caller_in_many_groups_has_their_rules_merged_once() -> None:
    """Every group of theirs has rules: the merge is kept for the next request in the same
    groups (by another user too, when no rule names users), not redone per request."""
    rules = RuleSet(
        Rule(frozenset({"pull"}), groups=frozenset({f"g{i % 1_000}"}), origin=f"r{i}")
        for i in range(10_000)
    )
    groups = frozenset(f"g{i}" for i in range(1_000))
    alice, bob = Identity("alice", groups), Identity("bob", groups)
    with mock.patch.object(rules_module, "_keys", wraps=rules_module._keys) as found:
        assert decide(rules, alice, None).rule is rules[0]
        assert decide(rules, bob, "pull", "x").rule is rules[0]
        assert [r.origin for r in rules.candidates(bob, None)][:3] == ["r0", "r1", "r2"]
        assert found.call_count == 1
    assert len(list(rules.candidates(alice, None))) == 10_000


def test_a_rule_for_many_of_a_callers_groups_is_merged_in_once() -> None:
    rules = RuleSet(
        Rule(frozenset({"pull"}), groups=frozenset(f"g{i}" for i in range(j, j + 50)),
             origin=f"r{j}")
        for j in range(100)
    )  # fmt: skip
    who = Identity("alice", frozenset(f"g{i}" for i in range(200)))
    assert [r.origin for r in rules.candidates(who, None)] == [f"r{j}" for j in range(100)]


@settings(max_examples=150)
@given(
    rule_lists(),
    index_callers(),
    index_callers(),
    st.lists(REPOSITORIES, max_size=4),
    st.sampled_from([16, 0]),
)
def test_callers_with_the_same_viewer_are_decided_alike(
    listed: tuple[Rule, ...],
    one: Identity,
    other: Identity,
    names: list[str | None],
    few: int,
) -> None:
    """What the catalog keeps per viewer holds for every caller of that viewer (`few` 0:
    the groups rules name kept per set of groups, as for a caller in many)."""
    rules = RuleSet(listed)
    with mock.patch.object(rules_module, "FEW_GROUPS", few):
        mine, theirs = rules.viewer(one), rules.viewer(other)
        assert rules.viewer(one) == mine  # asked again: what was kept, the same
    if mine != theirs:
        return
    for name in names:
        for action in ("pull", "push"):
            ours, others = decide(rules, one, action, name), decide(rules, other, action, name)
            assert (ours.allowed, ours.rule) == (others.allowed, others.rule)


def test_users_of_the_same_groups_share_a_viewer_unless_rules_name_users() -> None:
    by_group = RuleSet([Rule(frozenset({"pull"}), groups=frozenset({"devs"}), origin="a:1")])
    alice, bob = Identity("alice", frozenset({"devs", "x"})), Identity("bob", frozenset({"devs"}))
    assert by_group.viewer(alice) == by_group.viewer(bob)
    by_user = RuleSet([*by_group, Rule(frozenset({"pull"}), users=frozenset({"bob"}))])
    assert by_user.viewer(alice) != by_user.viewer(bob)
    own = RuleSet([Rule(frozenset({"pull"}), repositories=("${user}/**",))])
    assert own.viewer(alice) != own.viewer(bob)
