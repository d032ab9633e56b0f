"""Break-glass grants by tables: the grants file (a bad entry disables only itself, file:line),
the window a grant is in force (to the second), how authorization and the token server use
them (only where the ACL refuses; never for a robot), the audit line, durations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.moments import describe_duration, parse_duration
from proxy.core.problems import ConfigError
from proxy.core.yamllist import appended, without_entries
from proxy.http.routes import Operation, classify
from proxy.observe.audit import audit, audit_token
from proxy.policy.grantfile import (
    DEFAULT_MAX_DURATION,
    entry_text,
    parse_grants,
    parse_max_duration,
)
from proxy.policy.grants import NONE_ACTIVE, Grant, Grants
from proxy.policy.identity import Identity, RobotGrant
from proxy.policy.rules import Rule, Verdict, authorize, decide, recipe_rules
from proxy.tokenserver.scopes import REGISTRY_LEEWAY, Scope, TokenSettings, claims, granted

T0 = 1_893_456_000.0  # 2030-01-01T00:00:00Z
HOUR = 3600.0
FILE = """\
# grants
- id: inc-7
  user: alice
  actions: [push]
  repositories: ["apps/*", base/tools]
  granted: "2030-01-01T00:00:00Z"
  expires: "2030-01-01T02:00:00Z"
  reason: "INC-7: hotfix"
  granted_by: bob
- id: later
  user: carol
  actions: [pull, delete]
  repositories: ["**"]
  granted: 2030-01-01 08:00:00
  expires: 2030-01-01 09:00:00
  reason: planned cleanup
"""


def test_a_good_file() -> None:
    grants, problems = parse_grants(FILE, "grants.yaml", DEFAULT_MAX_DURATION)
    assert problems == []
    inc, later = grants
    assert inc == Grant("inc-7", "alice", frozenset({"push"}), ("apps/*", "base/tools"), T0,
                        T0 + 2 * HOUR, "INC-7: hotfix", "bob", "grants.yaml:2")  # fmt: skip
    assert (later.granted, later.expires, later.granted_by) == (T0 + 8 * HOUR, T0 + 9 * HOUR, None)
    assert later.origin == "grants.yaml:10"


ENTRY = """\
- id: x
  user: dave
  actions: [pull]
  repositories: [apps/x]
  granted: "2030-01-01T00:00:00Z"
  expires: "2030-01-01T01:00:00Z"
  reason: why
"""


@pytest.mark.parametrize(
    ("entry", "line", "message"),
    [
        ("- id: x\n", 1, "grant disabled: missing user, actions, repositories, granted, expires"),
        ("- just text\n", 1, "grant disabled: expected a mapping"),
        (ENTRY.replace("id: x", "id: X!"), 1, "grant disabled: id: expected [a-z0-9]"),
        (ENTRY.replace("user: dave", "user: robot$ci"), 2,
         "grant disabled: user: 'robot$ci': robots have no grants"),
        (ENTRY.replace("user: dave", 'user: "two words"'), 2, "grant disabled: user: expected"),
        (ENTRY.replace("[pull]", "[pull, write]"), 3, "grant disabled: actions: expected"),
        (ENTRY.replace("[pull]", "[]"), 3, "grant disabled: actions: expected"),
        (ENTRY.replace("[apps/x]", '["A/b"]'), 4, "grant disabled: repositories: bad glob"),
        (ENTRY.replace("[apps/x]", '["${user}/**"]'), 4,
         "grant disabled: repositories: '${user}/**': placeholders are for ACL rules"),
        (ENTRY.replace('"2030-01-01T00:00:00Z"', "soon"), 5,
         "grant disabled: granted: expected an ISO 8601"),
        (ENTRY.replace("01:00:00Z", "00:00:00Z"), 1,
         "grant disabled: expires: must be after granted"),
        (ENTRY.replace("01:00:00Z", "08:00:01Z"), 1,
         "grant disabled: in force for 28801s, longer than grants.max_duration (8h)"),
        (ENTRY.replace("reason: why", 'reason: "  "'), 7, "grant disabled: reason: expected one"),
        (ENTRY + "  colour: red\n", 8, "grant disabled: unknown key 'colour'"),
        (ENTRY + "  user: eve\n", 8, "grant disabled: duplicate key 'user'"),
        (ENTRY.replace("id: x", "id: later"), 1, "grant 'later' repeated (grants.yaml:10 wins)"),
    ],
)  # fmt: skip
def test_a_bad_entry_disables_only_its_grant(entry: str, line: int, message: str) -> None:
    grants, problems = parse_grants(FILE + entry, "grants.yaml", DEFAULT_MAX_DURATION)
    assert [g.id for g in grants] == ["inc-7", "later"]  # the others keep working
    (problem,) = problems
    assert (problem.source, problem.line - FILE.count("\n")) == ("grants.yaml", line)
    assert problem.message.startswith(message), problem.message


def test_the_maximum_is_the_configured_one() -> None:
    grants, problems = parse_grants(FILE, "grants.yaml", HOUR)
    assert [g.id for g in grants] == ["later"]
    assert [str(p) for p in problems] == [
        "grants.yaml:2: grant disabled: in force for 2h, longer than grants.max_duration (1h)"
    ]


@pytest.mark.parametrize("text", ["grants: [1]\n", "- [unclosed\n", "just text\n"])
def test_a_file_that_is_no_list_is_refused_whole(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_grants(text, "grants.yaml", DEFAULT_MAX_DURATION)


def test_empty_files_have_no_grants() -> None:
    for text in ("", "# none yet\n"):
        assert parse_grants(text, "g", DEFAULT_MAX_DURATION) == (Grants(()), [])


def grant(**changes: Any) -> Grant:
    base: dict[str, Any] = {
        "id": "g-1a2b3c4d",
        "user": "alice",
        "actions": frozenset({"push"}),
        "repositories": ("apps/*",),
        "granted": T0,
        "expires": T0 + HOUR,
        "reason": "a: tricky # reason",
        "granted_by": "bob",
    }
    return Grant(**(base | changes))


def test_an_appended_entry_reads_back_and_revoking_keeps_every_other_line() -> None:
    text = appended(FILE, entry_text(grant()), "# header\n")
    grants, problems = parse_grants(text, "grants.yaml", DEFAULT_MAX_DURATION)
    assert problems == [] and text.startswith(FILE)
    assert grants[-1] == grant(origin=f"grants.yaml:{FILE.count(chr(10)) + 1}")
    assert appended("", entry_text(grant()), "# header\n").startswith("# header\n- id: g-1a2b")
    by_id = without_entries(text, "grants.yaml", "id", ["inc-7"])
    assert by_id is not None and by_id.startswith("# grants\n- id: later\n")  # the comment stays
    by_user = without_entries(text, "grants.yaml", "user", ["alice"])
    assert by_user is not None
    assert [g.id for g in parse_grants(by_user, "g", DEFAULT_MAX_DURATION)[0]] == ["later"]


@pytest.mark.parametrize(
    ("now", "in_force"),
    [
        (T0 - 0.001, False),
        (T0, True),
        (T0 + HOUR - 0.001, True),
        (T0 + HOUR, False),  # not one second longer: not one instant
        (T0 + HOUR + 1, False),
    ],
)
def test_a_grant_is_in_force_from_granted_until_expires(now: float, in_force: bool) -> None:
    assert grant().in_force(now) is in_force
    found = Grants([grant()]).at(now).find("alice", "push", "apps/web")
    assert (found is not None) is in_force


RULES = (
    Rule(frozenset({"pull"}), repositories=("team/**",), upstream="http://team:5000",
         origin="acl.yaml:1"),
    Rule(frozenset({"pull"}), repositories=("apps/**",), tags=("v*",), origin="acl.yaml:4"),
    Rule(frozenset({"pull"}), origin="acl.yaml:8"),
)  # fmt: skip
GRANTS = Grants(
    [
        grant(),
        grant(id="team", repositories=("team/api",), actions=frozenset({"push", "delete"})),
        grant(id="old", repositories=("old/**",), expires=T0 + 1),
        grant(id="bobs", user="bob", repositories=("**",)),
    ]
)
ALICE = Identity("alice")
ROBOT = RobotGrant("ci", "alice", "alice", frozenset(), ("apps/**",), frozenset({"push"}))


@pytest.mark.parametrize(
    ("who", "action", "repository", "tag", "allowed", "grant_id", "rule"),
    [
        (ALICE, "push", "apps/web", None, True, "g-1a2b3c4d", "acl.yaml:8"),
        (ALICE, "push", "apps/web", "v1", True, "g-1a2b3c4d", "acl.yaml:4"),  # a tag rule refused
        (ALICE, "pull", "apps/web", None, True, None, "acl.yaml:8"),  # the ACL allows: no grant
        (ALICE, "delete", "apps/web", None, False, None, "acl.yaml:8"),  # not its action
        (ALICE, "push", "apps/web/sub", None, False, None, "acl.yaml:8"),  # not its repository
        (ALICE, "push", "old/x", None, False, None, "acl.yaml:8"),  # ended
        (ALICE, "delete", "team/api", None, True, "team", "acl.yaml:1"),
        (Identity("carol"), "push", "apps/web", None, False, None, "acl.yaml:8"),  # not hers
        (Identity(None), "push", "apps/web", None, False, None, None),  # anonymous: no grants
        (Identity("robot$ci", robot=ROBOT), "push", "apps/web", None, False, None, "acl.yaml:8"),
    ],
)  # fmt: skip
def test_a_grant_decides_only_what_the_acl_refuses(
    who: Identity, action: Any, repository: str, tag: str | None, allowed: bool,
    grant_id: str | None, rule: str | None,
) -> None:  # fmt: skip
    decision = decide(RULES, who, action, repository, tag, GRANTS.at(T0 + 60))
    assert decision.allowed is allowed
    assert (decision.grant.id if decision.grant else None) == grant_id
    assert (decision.rule.origin if decision.rule else None) == rule
    if grant_id is not None:
        assert decision.reason == f"grant {grant_id} ()"
        assert decision.acl_reason == f"rule {rule}"
    assert decide(RULES, who, action, repository, tag).grant is None  # without grants: the ACL


def test_a_granted_request_goes_where_the_acl_routes_the_repository() -> None:
    decision = decide(RULES, ALICE, "push", "team/api", grants=GRANTS.at(T0))
    assert decision.allowed and decision.upstream == "http://team:5000"


def test_the_catalog_and_the_ping_are_the_acls_alone() -> None:
    assert decide(RULES, ALICE, None, None, grants=GRANTS.at(T0)).grant is None
    assert not authorize(RULES, Identity(None), classify("GET", "/v2/"), GRANTS.at(T0)).allowed


def test_a_mount_source_a_grant_opens_is_kept_and_named() -> None:
    rules = (Rule(frozenset({"push", "pull"}), repositories=("mine/**",)),)
    pull = Grants([grant(id="read", actions=frozenset({"pull"}), repositories=("apps/**",))])
    mount = classify(
        "POST", "/v2/mine/x/blobs/uploads/", "mount=sha256:" + "a" * 64 + "&from=apps/web"
    )
    assert isinstance(mount, Operation)
    kept = authorize(rules, ALICE, mount, pull.at(T0))
    assert kept.allowed and not kept.drop_mount and kept.mount_grant is not None
    dropped = authorize(rules, ALICE, mount)
    assert dropped.allowed and dropped.drop_mount and dropped.mount_grant is None


def test_idle_grants_are_the_ones_not_in_force() -> None:
    assert [g.id for g in GRANTS.idle("alice", "push", "old/x", T0 + 60)] == ["old"]
    assert GRANTS.idle("alice", "push", "apps/web", T0 + 60) == []
    assert [g.id for g in GRANTS.idle("alice", "push", "apps/web", T0 - 1)] == ["g-1a2b3c4d"]


SETTINGS = TokenSettings("iss", "svc", None, None, expiry=300)  # type: ignore[arg-type]


def test_a_token_holds_what_a_grant_gives_and_ends_with_it() -> None:
    scope = Scope("repository", "apps/web", ("pull", "push"))
    access = granted(recipe_rules("pusher"), ALICE, scope, frozenset(), GRANTS.at(T0 + 60))
    assert access is not None and access.scope == scope
    assert [g.id for g in access.grants] == ["g-1a2b3c4d"]
    assert claims(SETTINGS, ALICE, [access], T0 + 60)["exp"] == T0 + 360  # token.expiry first
    # The registry takes a token REGISTRY_LEEWAY seconds past exp: exp is that much earlier.
    for now in (T0 + HOUR - 200, T0 + HOUR - 10):  # the last: already past exp, not the grant
        assert claims(SETTINGS, ALICE, [access], now)["exp"] + REGISTRY_LEEWAY == T0 + HOUR
    plain = granted(recipe_rules("pusher"), ALICE, scope, frozenset())
    assert plain is not None and plain.scope.actions == ("pull",) and plain.grants == ()
    assert claims(SETTINGS, ALICE, [plain], T0)["exp"] == T0 + 300


def test_the_audit_line_carries_the_grant(caplog: pytest.LogCaptureFixture) -> None:
    push = classify("PUT", "/v2/apps/web/manifests/1")
    pull = classify("GET", "/v2/apps/web/manifests/1")
    assert isinstance(push, Operation) and isinstance(pull, Operation)
    rules = (Rule(frozenset({"pull"}), repositories=("library/**",)),)
    reads = Grants([grant(id="reads", actions=frozenset({"pull"}), granted_by=None)]).at(T0)
    with caplog.at_level("INFO", "regproxy.audit"):
        audit(ALICE, push, 201, Verdict(decide(rules, ALICE, "push", "apps/web", None,
                                                GRANTS.at(T0))))  # fmt: skip
        audit(ALICE, pull, 200, Verdict(decide(RULES, ALICE, "pull", "apps/web")))  # the ACL's
        audit(ALICE, pull, 200, Verdict(decide(rules, ALICE, "pull", "apps/web", grants=reads)))
        audit_token(ALICE, "repository:apps/web:pull,push", grant())
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    record = {"id": "g-1a2b3c4d", "reason": "a: tricky # reason", "granted_by": "bob",
              "expires": "2030-01-01T01:00:00Z"}  # fmt: skip
    assert [(e["action"], e.get("status"), e["grant"]) for e in lines] == [
        ("push", 201, record),
        ("pull", 200, record | {"id": "reads", "granted_by": None}),  # a pull the ACL allows: none
        ("token", None, record),
    ]
    assert lines[2]["scope"] == "repository:apps/web:pull,push" and lines[0]["user"] == "alice"


def test_no_grants_change_nothing() -> None:
    for action in ("pull", "push", "delete"):
        assert decide(RULES, ALICE, action, "apps/web", grants=NONE_ACTIVE) == decide(
            RULES, ALICE, action, "apps/web"
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800), ("1w", 604800)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_max_duration(text) == seconds
    assert describe_duration(seconds) == text


@pytest.mark.parametrize("bad", ["0s", "8", "8 h", "1y", "-1h", "", "h"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_max_duration_also_takes_seconds() -> None:
    assert parse_max_duration(3600) == 3600.0 and DEFAULT_MAX_DURATION == 8 * 3600
    for bad in (0, -1, True, 1.5, None):
        with pytest.raises(ValueError):
            parse_max_duration(bad)
