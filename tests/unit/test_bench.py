"""The bench's fixtures are what they claim to be: its made-up users, rules and images read
as the proxy and the registry protocol read them (a bench measuring users the proxy refused,
or rules it never reached, would measure nothing). No timing here."""

from __future__ import annotations

import hashlib
import json

from bench import fixtures, plan, scale, storm
from proxy.authn.credentials import parse_htpasswd
from proxy.policy.acl import parse_acl_text
from proxy.policy.rules import Identity, decide


def test_filler_users_parse_as_cost_10_bcrypt_and_the_real_ones_verify() -> None:
    users = scale.Users(storm.bcrypt_line(("alice", "secret", 4)), {"alice": "secret"})
    parsed = parse_htpasswd(scale.htpasswd_text(users, 200), "htpasswd")
    assert not parsed.problems
    assert len(parsed.users) == 200
    fillers = [h for user, h in parsed.users.items() if user != "alice"]
    assert {(h.scheme, h.cost) for h in fillers} == {("bcrypt", 10)}
    assert parsed.users["alice"].value.startswith("$2y$04$")
    assert parsed.users["alice"].verify(b"secret")
    assert not parsed.users["alice"].verify(b"wrong")


def test_one_more_user_or_rule_is_one_more_entry() -> None:
    users = scale.Users("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", {"alice": "password"})
    assert len(parse_htpasswd(scale.htpasswd_text(users, 50, extra=1), "h").users) == 51
    rules, problems = parse_acl_text(scale.acl_text(99, extra=1), "acl.yaml")
    assert not problems
    assert len(rules) == 101


def test_the_users_rule_is_last_and_only_it_lets_them_pull() -> None:
    rules, problems = parse_acl_text(scale.acl_text(999), "acl.yaml")
    assert not problems
    assert len(rules) == 1000
    bench = Identity(scale.USER)
    decision = decide(rules, bench, "pull", scale.REPOSITORY)
    assert decision.allowed and decision.rule is rules[-1]
    assert not decide(rules[:-1], bench, "pull", scale.REPOSITORY).allowed


def test_the_viewer_sees_one_percent_of_the_catalog_spread_over_all_of_it() -> None:
    rules, problems = parse_acl_text(scale.acl_text(100, viewer=True), "acl.yaml")
    assert not problems
    names = scale.catalog_names(1000)
    assert names == sorted(names)  # the registry lists in this order
    viewer = Identity(scale.VIEWER)
    visible = [name for name in names if decide(rules, viewer, "pull", name).allowed]
    assert len(visible) == 10
    assert visible[0].startswith("team000/") and visible[-1].startswith("team009/")


def test_generated_images_are_consistent_and_distinct() -> None:
    block = storm.random_block(4096)
    first, second = (storm.make_image([1000, 2000, 4096], block) for _ in range(2))
    manifest = json.loads(first.manifest)
    assert first.digest == "sha256:" + hashlib.sha256(first.manifest).hexdigest()
    assert [entry["digest"] for entry in manifest["layers"]] == [b.digest for b in first.layers]
    assert [entry["size"] for entry in manifest["layers"]] == [1000, 2000, 4096]
    assert manifest["config"]["digest"] == first.config.digest
    for item in (first.config, *first.layers):
        assert item.digest == "sha256:" + hashlib.sha256(item.data).hexdigest()
    assert not {b.digest for b in first.layers} & {b.digest for b in second.layers}


def test_every_storm_has_fresh_users_one_per_client() -> None:
    by_case = fixtures.storm_users(plan.PLANS["full"].storm)
    assert set(by_case) == {"pull-1", "pull-8", "pull-32", "pull-64", "push-16"}
    assert all(len(users) == int(case.split("-")[1]) for case, users in by_case.items())
    everyone = [user for users in by_case.values() for user in users]
    assert len(everyone) == len(set(everyone))


def test_the_kinds_acl_puts_each_caller_at_its_place() -> None:
    from bench import kinds
    from proxy.policy.rules import RuleSet

    rules, problems = parse_acl_text(kinds.acl(1_000), "acl.yaml")
    assert problems == [] and len(rules) == 1_000
    indexed = RuleSet(rules)
    for caller, place in (("first", 0), ("middle", 500), ("last", 999)):
        assert decide(indexed, Identity(caller), None).rule is rules[place]
        assert decide(indexed, Identity(caller), "pull", scale.REPOSITORY).rule is rules[place]
    assert not decide(indexed, Identity("none"), "pull", scale.REPOSITORY).allowed
