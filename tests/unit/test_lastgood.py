"""The last good version of each file, by tables: what a reload falls back on, and when it
cannot (startup, a path never read before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.core.lastgood import LastGood
from proxy.core.problems import BadValue, ConfigError, Problem

ROBOTS, GROUPS = Path("conf/robots.yaml"), Path("conf/groups")
BROKEN = Problem(str(ROBOTS), 7, "invalid YAML")


def broken(path: Path) -> str:
    raise ConfigError([Problem(str(path), 7, "invalid YAML")])


def bad_value(path: Path) -> str:
    raise BadValue(f"ca_file: no usable CA certificate in {path}")


def test_at_startup_every_problem_is_raised() -> None:
    with pytest.raises(ConfigError):
        LastGood().read("robots", ROBOTS, broken)


def test_a_broken_file_keeps_its_last_good_value_and_says_why() -> None:
    files = LastGood({("robots", ROBOTS): "good"})
    assert files.read("robots", ROBOTS, broken) == "good"
    assert files.read("groups", GROUPS, lambda _: "new") == "new"  # others: as they are now
    assert files.kept == [(ROBOTS, BROKEN)]
    assert files.parsed == {("robots", ROBOTS): "good", ("groups", GROUPS): "new"}


def test_a_value_problem_names_the_file() -> None:
    files = LastGood({("oidc CA", ROBOTS): "pem"})
    assert files.read("oidc CA", ROBOTS, bad_value) == "pem"
    assert [(path, str(p)) for path, p in files.kept] == [
        (ROBOTS, f"{ROBOTS}: ca_file: no usable CA certificate in {ROBOTS}")
    ]


def test_a_file_never_read_before_or_read_as_another_kind_cannot_fall_back() -> None:
    files = LastGood({("groups", ROBOTS): "other"})
    with pytest.raises(ConfigError):
        files.read("robots", ROBOTS, broken)
    with pytest.raises(BadValue):
        LastGood({}).read("oidc CA", ROBOTS, bad_value)


def test_blamed_files_are_forced_to_their_last_good_value() -> None:
    previous = {("acl", ROBOTS): "old rules"}
    files = LastGood(previous)
    assert files.read("acl", ROBOTS, lambda _: "new rules") == "new rules"
    mismatch = Problem(str(ROBOTS), 3, "claims: name the issuer")
    unknown = Problem("elsewhere.yaml", 1, "no such file")
    blamed = files.blame([mismatch, unknown])
    assert blamed == {ROBOTS: [mismatch]}  # a file with no last good version is not blamed
    again = LastGood(previous, files.force(blamed))
    assert again.read("acl", ROBOTS, lambda _: "new rules") == "old rules"
    assert again.kept == [(ROBOTS, mismatch)]
    assert again.blame([mismatch]) == {}  # forced already: nothing more to fall back on
