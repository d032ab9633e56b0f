"""Properties of proxy.policy.rules' RuleSet: its indexes (by repository and by caller) find
the same deciding rule as reading every rule in order, and of proxy.policy.acl's
unreachable-rule check, which looks only at the earlier rules its index offers."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy import acl
from proxy.policy.identity import Identity
from proxy.policy.rules import Rule, RuleSet, decide, first_match

USERS = ["alice", "bob", "carol"]
GROUPS = ["devs", "ops", "Domain Users"]
ISSUERS = ["https://a.example", "https://b.example"]
PIECES = ["alice", "devs", "lib", "*", "**", "?", "${user}", "${group}"]
NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24")]
ADDRESSES = [None, ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("192.168.1.7")]


def subsets(names: list[str]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(names), max_size=2)


@st.composite
def globs(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=2),
                          min_size=1, max_size=3))  # fmt: skip
    return "/".join("".join(p) for p in parts)


@st.composite
def rules(draw: st.DrawFn, position: int) -> Rule:
    anonymous = draw(st.booleans())
    who = {} if anonymous else {
        "users": draw(subsets(USERS)),
        "groups": draw(subsets(GROUPS)),
        "issuers": draw(subsets(ISSUERS)),
        "claims": draw(st.sampled_from([(), (("ref", ("main",)),), (("ref", ("v*",)),)])),
    }  # fmt: skip
    return Rule(
        draw(st.frozensets(st.sampled_from(["pull", "push", "delete"]))),
        anonymous=anonymous,
        repositories=tuple(draw(st.lists(globs(), max_size=2))),
        tags=tuple(draw(st.lists(st.sampled_from(["v*", "latest", "v1.?"]), max_size=2))),
        networks=tuple(draw(st.lists(st.sampled_from(NETWORKS), max_size=1))),
        origin=f"acl.yaml:{position + 1}",
        **who,  # type: ignore[arg-type]
    )


@st.composite
def rule_lists(draw: st.DrawFn) -> tuple[Rule, ...]:
    count = draw(st.integers(min_value=0, max_value=14))
    return tuple(draw(rules(i)) for i in range(count))


@st.composite
def callers(draw: st.DrawFn) -> Identity:
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
@given(rule_lists(), callers(), REPOSITORIES, TAGS)
def test_the_indexed_rule_set_finds_the_rule_the_linear_scan_finds(
    listed: tuple[Rule, ...], who: Identity, repository: str | None, tag: str | None
) -> None:
    expected = first_match(listed, who, repository, tag)
    assert first_match(RuleSet(listed), who, repository, tag) is expected


@settings(max_examples=100)
@given(rule_lists(), callers())
def test_may_use_the_registry_is_decided_alike_indexed_or_not(
    listed: tuple[Rule, ...], who: Identity
) -> None:
    """`decide` with no action (the ping, the catalog): valid users by their first rule,
    anonymous callers by any rule for them that grants something."""
    assert decide(RuleSet(listed), who, None) == decide(listed, who, None)


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


@settings(max_examples=150)
@given(rule_lists(), callers(), callers(), st.lists(REPOSITORIES, max_size=4))
def test_callers_with_the_same_viewer_are_decided_alike(
    listed: tuple[Rule, ...], one: Identity, other: Identity, names: list[str | None]
) -> None:
    """What the catalog keeps per viewer holds for every caller of that viewer."""
    rules = RuleSet(listed)
    if rules.viewer(one) != rules.viewer(other):
        return
    for name in names:
        for action in ("pull", "push"):
            mine, theirs = decide(rules, one, action, name), decide(rules, other, action, name)
            assert (mine.allowed, mine.rule) == (theirs.allowed, theirs.rule)


def test_users_of_the_same_groups_share_a_viewer_unless_rules_name_users() -> None:
    by_group = RuleSet([Rule(frozenset({"pull"}), groups=frozenset({"devs"}), origin="a:1")])
    alice, bob = Identity("alice", frozenset({"devs", "x"})), Identity("bob", frozenset({"devs"}))
    assert by_group.viewer(alice) == by_group.viewer(bob)
    by_user = RuleSet([*by_group, Rule(frozenset({"pull"}), users=frozenset({"bob"}))])
    assert by_user.viewer(alice) != by_user.viewer(bob)
    own = RuleSet([Rule(frozenset({"pull"}), repositories=("${user}/**",))])
    assert own.viewer(alice) != own.viewer(bob)
