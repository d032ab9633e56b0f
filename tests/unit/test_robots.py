"""The robots file and robot secrets, by tables: parsing with file:line, a bad entry disabling only
its robot, edits that keep every other line, the secret format, expiries, grants."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from proxy.authn.credentials import Htpasswd, identify
from proxy.authn.htpasswd import UserFiles
from proxy.authn.robotfile import (
    SECRET_RE,
    Robot,
    derive,
    entry_text,
    new_secret,
    parse_expiry,
    parse_robots,
    secret_hash,
)
from proxy.authn.robots import grant
from proxy.core.problems import ConfigError
from proxy.core.yamllist import appendable, without_entries
from proxy.policy.identity import RobotGrant

KEY = derive(b"s" * 40, "robots")
HASH = secret_hash(KEY, "regproxy_robot_" + "a" * 43)
FILE = f"""\
# robots
- name: ci-app
  owner: alice
  repositories: [apps/app, "apps/app-*"]
  actions: [pull, push]
  expires: "2030-01-01T00:00:00Z"
  secret: "{HASH}"
  description: release pipeline
- name: nightly
  repositories: ["**"]
  actions: [pull]
  expires: 2030-06-01 12:00:00
  secret: "{HASH}"
"""
DATE_ONLY = FILE.replace('"2030-01-01T00:00:00Z"', "2030-01-01")


def test_a_good_file() -> None:
    robots, problems = parse_robots(FILE, "robots.yaml")
    assert problems == []
    app, nightly = robots["ci-app"], robots["nightly"]
    assert app.origin == "robots.yaml:2" and app.owner == "alice"
    assert app.repositories == ("apps/app", "apps/app-*")
    assert app.actions == frozenset({"pull", "push"})
    assert app.expires == 1893456000.0 and app.user == "robot$ci-app"
    assert nightly.owner is None and nightly.expires == 1906545600.0  # YAML timestamp, UTC
    assert "secret" not in repr(app) and HASH not in repr(app)
    assert parse_robots(DATE_ONLY, "r")[0]["ci-app"].expires == app.expires


ENTRY = '- name: x\n  repositories: [a]\n  actions: [pull]\n  expires: "2030-01-01"\n'


@pytest.mark.parametrize(
    ("entry", "line", "message"),
    [
        ("- name: x\n", 1, "robot disabled: missing repositories, actions, expires, secret"),
        ("- just text\n", 1, "robot disabled: expected a mapping"),
        (ENTRY.replace("name: x", "name: X!"), 1, "robot disabled: name: expected"),
        (ENTRY + "  secret: plain\n", 5, "robot disabled: secret: expected hmac-sha256:"),
        (ENTRY.replace("[pull]", "[pull, write]"), 3, "robot disabled: actions: expected"),
        (ENTRY.replace("[a]", '["A/b"]'), 2, "robot disabled: repositories: bad glob"),
        (ENTRY.replace("[a]", '["${user}/**"]'), 2,
         "robot disabled: repositories: '${user}/**': a robot's scopes have no ${user}"),
        (ENTRY.replace('"2030-01-01"', "soon"), 4, "robot disabled: expires: expected an ISO 8601"),
        (ENTRY + f'  secret: "{HASH}"\n  colour: red\n', 6, "robot disabled: unknown key 'colour'"),
        (ENTRY + f'  secret: "{HASH}"\n  owner: "a b"\n', 6, "robot disabled: owner: expected"),
        (ENTRY + f'  secret: "{HASH}"\n  name: y\n', 6, "robot disabled: duplicate key 'name'"),
        (ENTRY.replace("name: x", "name: nightly") + f'  secret: "{HASH}"\n', 1,
         "robot 'nightly' repeated (robots.yaml:9 wins)"),
    ],
)  # fmt: skip
def test_a_bad_entry_disables_only_its_robot(entry: str, line: int, message: str) -> None:
    text = FILE + entry
    robots, problems = parse_robots(text, "robots.yaml")
    assert sorted(robots) == ["ci-app", "nightly"]  # the others keep working
    (problem,) = problems
    assert (problem.source, problem.line - FILE.count("\n")) == ("robots.yaml", line)
    assert problem.message.startswith(message), problem.message


@pytest.mark.parametrize("text", ["robots: [1]\n", "- [unclosed\n", "just text\n"])
def test_a_file_that_is_no_list_is_refused_whole(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_robots(text, "robots.yaml")


def test_empty_files_have_no_robots() -> None:
    assert parse_robots("", "r") == ({}, []) and parse_robots("# none\n", "r") == ({}, [])


def robot(**changes: Any) -> Robot:
    base: dict[str, Any] = {
        "name": "new",
        "secret_hash": HASH,
        "repositories": ("apps/*",),
        "actions": frozenset({"pull", "push"}),
        "expires": 1893456000.0,
        "owner": "alice",
        "description": "a: tricky # text",
        "created": "2026-12-01T00:00:00Z",
    }
    base.update(changes)
    return Robot(**base)


def test_an_appended_entry_reads_back_and_every_other_line_stays() -> None:
    text = FILE + entry_text(robot())
    robots, problems = parse_robots(text, "robots.yaml")
    assert problems == []
    assert robots["new"] == robot(origin=f"robots.yaml:{FILE.count(chr(10)) + 1}")
    assert text.startswith(FILE)
    dropped = without_entries(text, "robots.yaml", "name", ["ci-app"])
    assert dropped is not None
    assert sorted(parse_robots(dropped, "r")[0]) == ["new", "nightly"]
    assert dropped.startswith("# robots\n- name: nightly\n")  # the comment stays
    assert without_entries(dropped, "robots.yaml", "name", ["ci-app"]) is None
    last = without_entries(text, "robots.yaml", "name", ["new"])
    assert last == FILE


@pytest.mark.parametrize(
    ("text", "ok"),
    [("", True), ("# nothing yet\n", True), (FILE, True), ("[{name: x}]\n", False),
     ("robots: []\n", False)],
)  # fmt: skip
def test_appendable(text: str, ok: bool) -> None:
    assert appendable(text, "robots.yaml") is ok


def test_secrets_are_long_random_and_recognisable() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(SECRET_RE.fullmatch(s) for s in secrets)
    scanner = re.compile(r"regproxy_robot_[A-Za-z0-9_-]{43}")  # what the README gives
    assert all(scanner.search(f"token={s};") for s in secrets)
    one = next(iter(secrets))
    assert secret_hash(KEY, one) != secret_hash(derive(b"t" * 40, "robots"), one)
    assert secret_hash(KEY, one).startswith("hmac-sha256:") and one not in secret_hash(KEY, one)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 12 * 3600), ("2w", 14 * 86400)],
)
def test_relative_expiries(text: str, seconds: int) -> None:
    assert parse_expiry(text, 1000.0) == 1000.0 + seconds


def test_absolute_expiries() -> None:
    assert parse_expiry("2030-01-01", 0) == 1893456000.0
    assert parse_expiry("2030-01-01T01:00:00+01:00", 0) == 1893456000.0
    for bad in ("0d", "tomorrow", "30 days", "-1d"):
        with pytest.raises(ValueError):
            parse_expiry(bad, 0)


USERS = UserFiles.build(
    Htpasswd({"alice": identify("{SHA}" + "a" * 27 + "=")}),  # type: ignore[dict-item]
    {"pusher": frozenset({"alice"}), "bots": frozenset({"robot$new"})},
)


def test_grants() -> None:
    now = time.time()
    assert grant(robot(), USERS, now) == RobotGrant(
        "new", "alice", "alice", frozenset({"pusher"}), ("apps/*",), frozenset({"pull", "push"})
    )
    orphan = grant(robot(owner=None), USERS, now)
    assert isinstance(orphan, RobotGrant)
    assert (orphan.principal, orphan.principal_groups) == ("robot$new", frozenset({"bots"}))
    assert grant(robot(owner="bob"), USERS, now) == "the robot's owner 'bob' is not a user any more"
    assert grant(robot(expires=now - 1), USERS, now) == (
        f"robot expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now - 1))}"
    )
