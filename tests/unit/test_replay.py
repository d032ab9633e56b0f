"""Replay by tables: each logged request decided under two policies, the changes grouped, and
what a log cannot tell counted, never guessed; and by properties: a policy replayed against
itself changes nothing, and every line is counted once."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.observe import replay as replay_module
from proxy.observe.logread import Logged
from proxy.observe.replay import Policy, Replay, Tally, Users, repository_pattern
from proxy.observe.replayreport import as_json
from proxy.policy.grants import NO_GRANTS, Grant, Grants
from proxy.policy.rules import Rule, recipe_rules

T = 1_796_551_200.0  # 2026-12-06T10:00:00Z
UPSTREAM = "http://registry:5000"
HTPASSWD = {"alice", "bob", "carol"}
GROUPS = {"alice": frozenset({"pusher"}), "bob": frozenset({"team"})}
TEAM = (
    Rule(frozenset({"pull", "push", "delete"}), groups=frozenset({"pusher"}), origin="acl:1"),
    Rule(frozenset({"pull", "push"}), groups=frozenset({"team"}), repositories=("team/**",),
         origin="acl:3"),
    Rule(frozenset({"pull"}), repositories=("library/**",), origin="acl:6"),
)  # fmt: skip


def policy(
    rules: tuple[Rule, ...] = recipe_rules("pusher"),
    known: set[str] = HTPASSWD,
    groups: dict[str, frozenset[str]] = GROUPS,
    elsewhere: tuple[str, ...] = (),
    grants: Grants = NO_GRANTS,
) -> Policy:
    return Policy(rules, grants, Users(known, groups, "htpasswd", elsewhere), UPSTREAM, "/auth")


def line(user: str | None, method: str, target: str, status: int = 200, at: float = T,
         client: str = "10.0.0.1") -> Logged:  # fmt: skip
    return Logged(at, client, user, method, target, status)


def replayed(before: Policy, after: Policy, *lines: Logged | None) -> Replay:
    """The lines of `access.log` replayed."""
    replay = Replay(before, after)
    replay.source = "access.log"
    for number, logged in enumerate(lines, 1):
        replay.add(logged, number)
    return replay


def summary(replay: Replay) -> list[tuple[str | None, str, str, str, str, int]]:
    return [
        (c.user, c.action, c.pattern, c.before.words(False), c.after.words(False), c.count)
        for c in replay.sorted_changes()
    ]


MANIFEST = "/v2/team/app/manifests/1"
UPLOAD = "/v2/team/app/blobs/uploads/"


@pytest.mark.parametrize(
    ("after", "lines", "changes"),
    [
        (policy(TEAM), [line("carol", "GET", MANIFEST)],  # valid-user pull: gone
         [("carol", "pull", "team/app", "allow", "deny 403", 1)]),
        (policy(TEAM), [line("bob", "POST", UPLOAD, 403)],  # the team may push now
         [("bob", "push", "team/app", "deny 403", "allow", 1)]),
        (policy(TEAM), [line("carol", "GET", "/v2/library/x/manifests/1")], []),  # pull stays
        (policy(known={"alice", "bob"}), [line("carol", "GET", MANIFEST)] * 2,  # user deleted
         [("carol", "pull", "team/app", "allow", "unknown user 401", 2)]),
        (policy(known={"alice", "bob"}), [line("carol", "GET", "/v2/")],  # pings too
         [("carol", "ping", "-", "allow", "unknown user 401", 1)]),
        (policy(groups={"bob": frozenset({"team"})}), [line("alice", "DELETE", MANIFEST, 202)],
         [("alice", "delete", "team/app", "allow", "deny 403", 1)]),  # out of group pusher
        (policy(TEAM), [line("carol", "GET", "/v2/team/a/tags/list"),
                        line("carol", "HEAD", "/v2/team/b/blobs/sha256:" + "a" * 64)],
         [("carol", "pull", "team/*", "allow", "deny 403", 2)]),
    ],
)  # fmt: skip
def test_changes(after: Policy, lines: list[Logged], changes: list[tuple[object, ...]]) -> None:
    assert summary(replayed(policy(), after, *lines)) == changes


def test_a_change_names_the_rules_and_the_first_line() -> None:
    replay = replayed(
        policy(), policy(TEAM),
        line("bob", "GET", "/v2/library/x/manifests/1"),
        line("carol", "GET", MANIFEST, at=T + 60),
        line("carol", "GET", "/v2/team/web/manifests/2", at=T + 1),
    )  # fmt: skip
    [change] = replay.sorted_changes()
    assert (change.before.by, change.after.by) == (
        "rule built-in: valid-user",
        "no rule matched (deny by default)",
    )
    assert (change.first_line, change.first_seen, change.last_seen) == (
        "access.log:2",
        T + 1,
        T + 60,
    )
    assert list(change.repositories) == ["team/app", "team/web"]  # in the order read


@pytest.mark.parametrize(
    ("logged", "kind"),
    [
        (line(None, "GET", "/v2/", 401), "before_authentication"),  # no credentials, or wrong
        (line("carol", "GET", MANIFEST, 401), "before_authentication"),  # Apache: refused pw
        (line(None, "GET", MANIFEST, 429), "before_authentication"),
        (line("robot$ci", "GET", MANIFEST), "unresolved"),
        (line("carol", "GET", "/auth?scope=repository:a:pull"), "token"),
        (line(None, "GET", "/favicon.ico", 404), "not_v2"),
        (line(None, "", "\x16\x03\x01", 400), "not_v2"),
        (line("carol", "GET", "/v2/Team/manifests/1", 400), "refused"),  # not a valid name
        (line("carol", "OPTIONS", "/v2/", 405), "refused"),
    ],
)
def test_what_a_log_cannot_tell_is_counted(logged: Logged, kind: str) -> None:
    replay = replayed(policy(), policy(TEAM), logged)
    assert (replay.decided, replay.changes) == (0, {})
    assert {k: s.count for k, s in replay.undecided.items() if s.count} == {kind: 1}
    assert replay.undecided[kind].first == ["access.log:1"]


def test_users_only_another_source_knows_are_unresolved_not_guessed() -> None:
    ldap = policy(elsewhere=("ldap",))
    replay = replayed(ldap, policy(TEAM, elsewhere=("ldap",)), line("dave", "GET", MANIFEST))
    assert replay.undecided["unresolved"].count == 1 and replay.unresolved_users == {"dave": 1}
    # Without another source, a user the files do not know is refused on both sides: no change.
    replay = replayed(policy(), policy(TEAM), line("dave", "GET", MANIFEST))
    assert (replay.decided, replay.changes, replay.disagreements.count) == (1, {}, 1)


def test_anonymous_requests_that_were_answered_are_decided_as_anonymous() -> None:
    public = (Rule(frozenset({"pull"}), repositories=("public/**",), anonymous=True,
                   origin="acl:9"), *recipe_rules("pusher"))  # fmt: skip
    replay = replayed(policy(public), policy(), line(None, "GET", "/v2/public/a/manifests/1"))
    assert summary(replay) == [(None, "pull", "public/a", "allow", "deny 401", 1)]


def test_network_rules_read_the_logged_client() -> None:
    inside = (Rule(frozenset({"pull"}), networks=(ip_network("10.0.0.0/8"),), origin="acl:2"),)
    replay = replayed(
        policy(), policy(inside),
        line("carol", "GET", MANIFEST, client="10.1.2.3"),
        line("carol", "GET", MANIFEST, client="192.0.2.1"),
    )  # fmt: skip
    assert summary(replay) == [("carol", "pull", "team/app", "allow", "deny 403", 1)]


def test_grants_in_force_at_the_logged_moment_decide() -> None:
    grant = Grant("inc-1", "carol", frozenset({"push"}), ("team/*",), T, T + 3600, "INC-1")
    with_grant = policy(grants=Grants([grant]))
    replay = replayed(
        with_grant, policy(),
        line("carol", "POST", UPLOAD, 202, at=T + 10),  # in force: the grant allowed it
        line("carol", "POST", UPLOAD, 403, at=T + 3600),  # ended: refused either way
    )  # fmt: skip
    [change] = replay.sorted_changes()
    assert (change.count, change.before.by, change.after.words(False)) == (
        1,
        "grant inc-1 ()",
        "deny 403",
    )


def test_a_mount_dropped_and_an_upstream_moved_are_changes() -> None:
    moved = (Rule(frozenset({"pull", "push"}), upstream="http://other:5000", origin="acl:1"),)
    replay = replayed(policy(recipe_rules("team")), policy(moved),
                      line("bob", "GET", MANIFEST))  # fmt: skip
    [change] = replay.sorted_changes()
    assert (change.before.words(True), change.after.words(True)) == (
        f"allow via {UPSTREAM}", "allow via http://other:5000")  # fmt: skip
    mount = "/v2/team/app/blobs/uploads/?mount=sha256:" + "b" * 64 + "&from=library/x"
    no_library = (Rule(frozenset({"pull", "push"}), repositories=("team/**",), origin="acl:1"),)
    replay = replayed(policy(moved), policy(no_library), line("bob", "POST", mount, 201))
    assert summary(replay) == [("bob", "push", "team/app", "allow", "allow, mount dropped", 1)]


def test_malformed_lines_are_counted_with_the_first_few_line_numbers() -> None:
    replay = replayed(policy(), policy(), *[None] * 7, line("carol", "GET", MANIFEST))
    assert replay.malformed.count == 7
    assert replay.malformed.first == [f"access.log:{n}" for n in range(1, 6)]
    assert (replay.requests, replay.decided) == (1, 1)


@pytest.mark.parametrize(
    ("names", "pattern"),
    [
        (set(), "-"),
        ({"team/app"}, "team/app"),
        ({"team/app", "team/web"}, "team/*"),
        ({"team/app", "team/x/web"}, "team/**"),
        ({"team/app", "library/x"}, "**"),
        ({"a/b/c", "a/b/d"}, "a/b/*"),
    ],
)
def test_repository_pattern(names: set[str], pattern: str) -> None:
    assert repository_pattern(names) == pattern


_LINES = st.builds(
    Logged,
    time=st.floats(T, T + 86400),
    client=st.sampled_from(["10.0.0.1", "192.0.2.1", "::1", "not-an-address"]),
    user=st.sampled_from([None, "alice", "bob", "carol", "dave", "robot$ci"]),
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", ""]),
    target=st.sampled_from([
        "/v2/", "/v2/_catalog", MANIFEST, UPLOAD, "/v2/library/x/blobs/sha256:" + "c" * 64,
        "/v2/team/app/manifests/latest", "/v2/Bad/manifests/1", "/auth", "/", "/v2foo",
        UPLOAD + "?mount=sha256:" + "d" * 64 + "&from=library/x",
    ]),
    status=st.sampled_from([200, 201, 202, 401, 403, 404, 429, 400]),
)  # fmt: skip
_POLICIES = st.sampled_from([policy(), policy(TEAM), policy(known={"alice"}),
                             policy(TEAM, elsewhere=("ldap",))])  # fmt: skip


@given(_POLICIES, st.lists(st.none() | _LINES, max_size=40))
def test_a_policy_replayed_against_itself_changes_nothing(
    side: Policy, lines: list[Logged]
) -> None:
    assert replayed(side, side, *lines).changes == {}


@given(_POLICIES, _POLICIES, st.lists(st.none() | _LINES, max_size=40))
def test_every_line_is_counted_once(before: Policy, after: Policy, lines: list[Logged]) -> None:
    replay = replayed(before, after, *lines)
    undecided = sum(sample.count for sample in replay.undecided.values())
    assert replay.requests + replay.malformed.count == len(lines)
    assert replay.decided + undecided == replay.requests
    assert replay.changed <= replay.decided
    swapped = replayed(after, before, *lines)
    assert swapped.changed == replay.changed  # a change seen from the other side is one too


_RULES = st.lists(
    st.sampled_from([
        *TEAM,
        Rule(frozenset({"pull"}), networks=(ip_network("10.0.0.0/8"),), origin="acl:7"),
        Rule(frozenset({"pull", "push"}), repositories=("team/**",), tags=("v*",),
             origin="acl:8"),
        Rule(frozenset({"push"}), users=frozenset({"carol"}), repositories=("library/**",),
             origin="acl:9"),
        Rule(frozenset({"pull"}), repositories=("team/**",), upstream="http://other:5000",
             origin="acl:10"),
    ]),
    max_size=4,
).map(tuple)  # fmt: skip
_GRANTS = st.lists(
    st.builds(
        lambda user, start, hours: Grant(f"g-{user}", user, frozenset({"push"}), ("team/*",),
                                         T + start, T + start + hours * 3600, "INC"),
        st.sampled_from(["alice", "carol", "dave"]), st.floats(0, 86400), st.integers(1, 6),
    ),
    max_size=2,
).map(Grants)  # fmt: skip
_RANDOM_POLICIES = st.builds(
    policy,
    rules=_RULES,
    grants=_GRANTS,
    elsewhere=st.sampled_from([(), ("ldap",)]),
)


def _merged(before: Policy, after: Policy, lines: list[Logged | None]) -> Tally:
    """Each line decided by a replay of its own (nothing memoized), the tallies merged."""
    tally = Tally()
    for number, logged in enumerate(lines):
        replay = replayed(before, after, logged)
        tally.merge(replay.tally(), base=number)
    return tally


# A few requests, each logged many times at other moments from other addresses: what the
# memos tell apart (or must).
_REPEATED = st.lists(_LINES, min_size=1, max_size=4).flatmap(
    lambda requests: st.lists(
        st.builds(
            lambda logged, at, client: logged._replace(time=at, client=client),
            st.sampled_from(requests), _LINES.map(lambda x: x.time), _LINES.map(lambda x: x.client),
        ),
        max_size=30,
    )
)  # fmt: skip


@settings(max_examples=300)
@given(_RANDOM_POLICIES, _RANDOM_POLICIES, _REPEATED)
def test_memoized_decisions_are_the_decisions(
    before: Policy, after: Policy, lines: list[Logged | None]
) -> None:
    # Repeated requests hit the memos; a replay per line decides every one afresh.
    memoized = replayed(before, after, *lines)
    assert as_json(memoized, ["access.log"]) == as_json(
        _merged(before, after, lines), ["access.log"]
    )


@given(_POLICIES, _POLICIES, st.lists(st.none() | _LINES, max_size=40), st.data())
def test_tallies_of_pieces_merge_into_the_tally_of_the_whole(
    before: Policy, after: Policy, lines: list[Logged | None], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(lines)))
    whole = replayed(before, after, *lines)
    tally = replayed(before, after, *lines[:cut]).tally()
    tally.merge(replayed(before, after, *lines[cut:]).tally(), base=cut)
    assert as_json(tally, ["access.log"]) == as_json(whole, ["access.log"])


def test_the_unresolved_users_kept_are_the_first_in_sort_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_module, "KEPT_NAMES", 2)
    ldap = policy(elsewhere=("ldap",))
    names = ["erin", "dave", "erin", "zoe", "bea", "dave", "zoe"]
    lines = [line(name, "GET", MANIFEST) for name in names]
    whole = replayed(ldap, ldap, *lines)
    assert whole.unresolved_users == {"dave": 2, "bea": 1}
    assert whole.undecided["unresolved"].count == 7
    tally = replayed(ldap, ldap, *lines[:3]).tally()
    tally.merge(replayed(ldap, ldap, *lines[3:]).tally(), base=3)
    assert tally.unresolved_users == whole.unresolved_users


def test_a_change_merged_keeps_the_first_repositories_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_module, "KEPT_NAMES", 2)
    names = ["a", "b", "a", "c", "d"]
    lines = [line("carol", "GET", f"/v2/team/{name}/manifests/1") for name in names]
    whole = replayed(policy(), policy(TEAM), *lines)
    tally = replayed(policy(), policy(TEAM), *lines[:2]).tally()
    tally.merge(replayed(policy(), policy(TEAM), *lines[2:]).tally(), base=2)
    for found in (whole, tally):
        [change] = found.sorted_changes()
        assert (list(change.repositories), change.more, change.count) == (
            ["team/a", "team/b"], True, 5)  # fmt: skip
