"""The `rate_limits:` section and its decisions: what loads, every problem with its line,
which budget a request spends (tables and properties), the headers and the refusal."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.conf.config import load
from proxy.core.problems import ConfigError
from proxy.http.routes import Operation
from proxy.policy.identity import Identity, RobotGrant
from proxy.policy.ratelimits import (
    Applies,
    Budget,
    RateLimits,
    budget_for,
    explained,
    headers,
    measure,
    parse_rate_limits,
    refusal,
    subject,
)

GOOD = """\
rate_limits:
  anonymous:
    manifest_pulls: {limit: 100, per: 6h}
  users:
    manifest_pulls: {limit: 200, per: 6h}
    blob_bytes: {limit: 50GiB, per: 1d}
    pushes: {limit: 500, per: 1h}
  robots:
    pushes: {limit: 50, per: 1h}
  overrides:
    - groups: [ci]
      manifest_pulls: {limit: 5000, per: 6h}
    - users: [release-bot, alice]
      name: release
      pushes: unlimited
      manifest_pulls: {limit: 7, per: 90s}
"""


def limits_of(text: str) -> RateLimits:
    node = yaml.compose(text)
    assert isinstance(node, yaml.MappingNode)
    settings, problems = parse_rate_limits(node.value[0][1], "f.yaml")
    assert problems == [] and settings is not None
    return settings


LIMITS = limits_of(GOOD)
ADDRESS = ipaddress.ip_address("10.0.0.7")
ALICE = Identity("alice", frozenset({"ci"}))
BOB = Identity("bob")
CI = Identity("carol", frozenset({"ci"}))
ANONYMOUS = Identity(None)
ROBOT = Identity("robot$deploy", robot=RobotGrant("deploy", None, "robot$deploy", frozenset(),
                                                  ("**",), frozenset({"push"})))  # fmt: skip
WORKLOAD = Identity("github:acme/app", frozenset({"github-org:acme"}), issuer="https://gh")


def test_the_section_loads_with_the_config(tmp_path: Path) -> None:
    path = tmp_path / "regproxy.yaml"
    path.write_text(GOOD)
    config = load(path)
    assert config.rate_limits is not None
    pulls = config.rate_limits.classes["users"]["manifest_pulls"]
    assert (pulls.limit, pulls.per, pulls.origin) == (200, 21600, f"{path}:5")
    assert [o.name for o in config.rate_limits.overrides] == ["group:ci", "release"]
    assert load(None).rate_limits is None  # off unless configured
    path.write_text("rate_limits:\n")
    assert load(path).rate_limits is None


@pytest.mark.parametrize(
    ("who", "action", "budget", "whose"),
    [
        (BOB, "manifest_pulls", "users: 200 manifest pulls per 6h", "user:bob"),
        (CI, "manifest_pulls", "group:ci: 5000 manifest pulls per 6h", "user:carol"),
        # alice is in ci, but the override naming her comes second: the first match wins.
        (ALICE, "manifest_pulls", "group:ci: 5000 manifest pulls per 6h", "user:alice"),
        (ALICE, "pushes", None, None),  # unlimited by the second override
        (CI, "pushes", "users: 500 manifests pushed per 1h", "user:carol"),  # not overridden
        (BOB, "blob_bytes", "users: 50GiB of blobs pulled per 1d", "user:bob"),
        (ANONYMOUS, "manifest_pulls", "anonymous: 100 manifest pulls per 6h", "address:10.0.0.7"),
        (ANONYMOUS, "pushes", None, None),  # nothing configured for anonymous pushes
        (ROBOT, "pushes", "robots: 50 manifests pushed per 1h", "user:robot$deploy"),
        (ROBOT, "manifest_pulls", "users: 200 manifest pulls per 6h", "user:robot$deploy"),
        (WORKLOAD, "pushes", "users: 500 manifests pushed per 1h", "user:github:acme/app"),
    ],
)
def test_which_budget_applies(
    who: Identity, action: str, budget: str | None, whose: str | None
) -> None:
    applies = budget_for(LIMITS, who, ADDRESS, action)  # type: ignore[arg-type]
    if budget is None:
        assert applies is None
        return
    assert applies is not None
    assert f"{applies.budget.name}: {applies.budget.describe()}" == budget
    assert applies.subject == whose


def test_an_override_changes_the_limit_not_the_count() -> None:
    """The count's key names the subject, action and window only: a user moved into a group
    with a larger budget keeps what they spent."""
    bob = budget_for(LIMITS, BOB, ADDRESS, "manifest_pulls")
    promoted = budget_for(LIMITS, Identity("bob", frozenset({"ci"})), ADDRESS, "manifest_pulls")
    assert bob is not None and promoted is not None
    assert bob.key == promoted.key and bob.budget != promoted.budget


@pytest.mark.parametrize(
    ("address", "whose"),
    [
        ("192.0.2.1", "address:192.0.2.1"),
        ("2001:db8::1", "address:2001:db8::/64"),
        ("2001:db8::ffff:1", "address:2001:db8::/64"),
        ("2001:db8:0:1::1", "address:2001:db8:0:1::/64"),
        (None, "address:unknown"),
    ],
)
def test_anonymous_callers_are_counted_by_address(address: str | None, whose: str) -> None:
    where = ipaddress.ip_address(address) if address else None
    assert subject(ANONYMOUS, where) == whose


@pytest.mark.parametrize(
    ("method", "kind", "measured"),
    [
        ("GET", "manifest", ("manifest_pulls", 1, True)),
        ("HEAD", "manifest", ("manifest_pulls", 0, False)),  # shows, never refused
        ("GET", "blob", ("blob_bytes", 0, True)),  # counted as sent, at the end
        ("HEAD", "blob", None),
        ("PUT", "manifest", ("pushes", 1, True)),
        ("POST", "upload-start", ("pushes", 0, True)),
        ("PATCH", "upload", None),  # an upload already started may finish
        ("PUT", "upload", None),
        ("DELETE", "manifest", None),
        ("GET", "tags", None),
        ("GET", "ping", None),
    ],
)
def test_what_a_request_counts(method: str, kind: str, measured: tuple[str, int, bool]) -> None:
    found = measure(method, Operation(kind, None, "a/b"))  # type: ignore[arg-type]
    assert (found and (found.action, found.amount, found.refusable)) == measured


def test_the_headers_and_the_refusal_say_docker_hubs_way() -> None:
    budget = Budget("anonymous", "manifest_pulls", 100, 21600)
    assert headers(budget, 76) == {
        "RateLimit-Limit": "100;w=21600",
        "RateLimit-Remaining": "76;w=21600",
    }
    message, refused = refusal(Applies(budget, "address:10.0.0.7"), 21600, 21600 - 9660.2)
    assert message == (
        "rate limit reached: 100 manifest pulls per 6h (budget anonymous/manifest_pulls); "
        "retry in 2h41m"
    )
    assert refused == {
        "Retry-After": "9661",
        "RateLimit-Limit": "100;w=21600",
        "RateLimit-Remaining": "0;w=21600",
    }
    assert refusal(Applies(budget, "x"), 100, 99.5)[1]["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("rate_limits: [1]", 1, "rate_limits: expected a mapping"),
        (
            "rate_limits:\n  user: {}",
            2,
            "rate_limits: unknown key 'user' (expected anonymous, "
            "users, robots, workloads, overrides)",
        ),
        (
            "rate_limits:\n  users:\n    manifest_pull: unlimited",
            3,
            "rate_limits.users: unknown key 'manifest_pull' (expected manifest_pulls, blob_bytes, "
            "pushes)",
        ),
        (
            "rate_limits:\n  users:\n    pushes: {limit: 0, per: 1h}",
            3,
            "rate_limits.users.pushes: limit: expected a positive number of requests, got 0",
        ),
        (
            "rate_limits:\n  users:\n    pushes: {limit: 5, per: 6 hours}",
            3,
            "rate_limits.users.pushes: expected 90s, 30m, 8h, 2d or 1w, got '6 hours'",
        ),
        (
            "rate_limits:\n  users:\n    pushes: {limit: 5, per: 5w}",
            3,
            "rate_limits.users.pushes: per: at most 31d, got '5w'",
        ),
        (
            "rate_limits:\n  users:\n    pushes: {limit: 5}",
            3,
            "rate_limits.users.pushes: expected {limit: N, per: DURATION} or unlimited, got "
            "{'limit': 5}",
        ),
        (
            "rate_limits:\n  users:\n    blob_bytes: {limit: 5 parsecs, per: 1h}",
            3,
            "rate_limits.users.blob_bytes: limit: expected bytes (a number, or 500MB, 50GiB), got "
            "'5 parsecs'",
        ),
        (
            "rate_limits:\n  users:\n    pushes: unlimited\n    pushes: unlimited",
            4,
            "rate_limits.users: duplicate key 'pushes'",
        ),
        ("rate_limits:\n  overrides: {groups: ci}", 2, "rate_limits.overrides: expected a list"),
        (
            "rate_limits:\n  overrides:\n    - pushes: unlimited",
            3,
            "rate_limits.overrides[0]: needs users or groups",
        ),
        (
            "rate_limits:\n  overrides:\n    - groups: [ci]",
            3,
            "rate_limits.overrides[0]: names no budget (manifest_pulls, blob_bytes, pushes)",
        ),
        (
            "rate_limits:\n  overrides:\n    - groups: [1]\n      pushes: unlimited",
            3,
            "rate_limits.overrides[0].groups: expected a name or a list of names, got [1]",
        ),
        (
            "rate_limits:\n  overrides:\n    - groups: [ci]\n      name: a b\n      pushes: "
            "unlimited",
            4,
            "rate_limits.overrides[0].name: expected up to 64 letters",
        ),
        (
            "rate_limits:\n  overrides:\n    - groups: [ci]\n      pushs: unlimited",
            4,
            "rate_limits.overrides[0]: unknown key 'pushs' (expected manifest_pulls, blob_bytes, "
            "pushes, groups, name, users)",
        ),
    ],
)
def test_every_problem_names_its_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "regproxy.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as raised:
        load(path)
    problems = [str(p) for p in raised.value.problems]
    assert any(p.startswith(f"{path}:{line}: {message}") for p in problems), problems


@pytest.mark.parametrize(
    ("value", "bytes_"),
    [
        (1, 1),
        ("500MB", 500_000_000),
        ("50GiB", 50 * 2**30),
        ("1.5 GB", 1_500_000_000),
        ("2kib", 2048),
        ("10", 10),
    ],
)
def test_byte_budgets_take_units(value: object, bytes_: int) -> None:
    text = f"rate_limits:\n  users:\n    blob_bytes: {{limit: {value}, per: 1h}}\n"
    budget = limits_of(text).classes["users"]["blob_bytes"]
    assert budget.limit == bytes_


names = st.sampled_from(["alice", "bob", "carol", "robot$x", "gh:a/b"])
groups = st.frozensets(st.sampled_from(["ci", "ops", "dev"]), max_size=3)
actions = st.sampled_from(["manifest_pulls", "blob_bytes", "pushes"])


@given(names, groups, actions, groups)
def test_the_first_override_that_names_the_action_decides(
    name: str, member_of: frozenset[str], action: str, override_groups: frozenset[str]
) -> None:
    """Properties of matching: an override that matches and names the action decides; one
    that does not name it never does; group membership only ever adds overrides."""
    overrides = "".join(
        f"    - groups: [{group}]\n      {action}: {{limit: {n + 1}, per: 1h}}\n"
        for n, group in enumerate(sorted(override_groups))
    )
    text = "rate_limits:\n  users:\n    manifest_pulls: {limit: 1000, per: 1h}\n"
    limits = limits_of(text + ("  overrides:\n" + overrides if overrides else ""))
    who = Identity(name, member_of)
    applies = budget_for(limits, who, None, action)  # type: ignore[arg-type]
    matching = sorted(member_of & override_groups)
    if matching:
        assert applies is not None and applies.budget.name == f"group:{matching[0]}"
    elif action == "manifest_pulls":
        assert applies is not None and applies.budget.name == "users"
    else:
        assert applies is None
    assert applies is None or applies.subject == f"user:{name}"


def test_explain_names_each_budget_an_action_spends_and_whose_count() -> None:
    assert explained(LIMITS, BOB, None, "pull") == [
        "200 manifest pulls per 6h for user:bob (budget users/manifest_pulls, f.yaml:5)",
        "50GiB of blobs pulled per 1d for user:bob (budget users/blob_bytes, f.yaml:6)",
    ]
    assert explained(LIMITS, ALICE, None, "push") == [
        "unlimited manifests pushed (budget release/pushes, f.yaml:15)"
    ]
    assert explained(LIMITS, ANONYMOUS, None, "pull") == [
        "100 manifest pulls per 6h for each address (budget anonymous/manifest_pulls, f.yaml:3)"
    ]
    assert explained(LIMITS, ANONYMOUS, None, "push") == ["none for push"]
    assert explained(LIMITS, BOB, None, "delete") == ["none for delete"]
