"""proxy.core.values: each validator's accepted values and its errors, as tables."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.problems import BadValue
from proxy.core.values import (
    boolean,
    choice,
    file_path,
    identifier,
    keyed,
    name,
    port,
    seconds,
    strings,
    subset,
    text,
    whole_number,
)

LEVELS = ("debug", "info", "off")
ACTIONS = ("pull", "push", "delete")
BASE = Path("/etc/regproxy")


@pytest.mark.parametrize(
    ("parse", "value", "expected"),
    [
        (boolean, True, True),
        (boolean, False, False),
        (seconds, 5, 5.0),
        (seconds, 0.25, 0.25),
        (lambda v: seconds(v, zero=True), 0, 0.0),
        (lambda v: seconds(v, high=60), 60, 60.0),
        (lambda v: seconds(v, high=60, zero=True), 0.0, 0.0),
        (whole_number, 1, 1),
        (whole_number, 10**6, 10**6),
        (lambda v: whole_number(v, low=0), 0, 0),
        (lambda v: whole_number(v, 1, 64), 64, 64),
        (identifier, "ci-app", "ci-app"),
        (identifier, "g-3f9a61c2", "g-3f9a61c2"),
        (identifier, "a" * 64, "a" * 64),
        (port, 1, 1),
        (port, 65535, 65535),
        (text, "Registry Authentication", "Registry Authentication"),
        (text, " padded ", " padded "),
        (name, "pusher", "pusher"),
        (name, "ci-bot.1", "ci-bot.1"),
        (strings, "alice", ("alice",)),
        (strings, ["alice", "bob"], ("alice", "bob")),
        (lambda v: choice(v, LEVELS), "INFO", "info"),
        (lambda v: choice(v, LEVELS), False, "off"),  # YAML 1.1 reads a bare off as false
        (lambda v: subset(v, ACTIONS), "pull", frozenset({"pull"})),
        (lambda v: subset(v, ACTIONS), ["push", "pull"], frozenset({"pull", "push"})),
        (lambda v: file_path(v, BASE), "htpasswd", BASE / "htpasswd"),
        (lambda v: file_path(v, BASE), "/run/secret", Path("/run/secret")),
    ],
)  # fmt: skip
def test_accepted(parse: Callable[[Any], Any], value: Any, expected: Any) -> None:
    result = parse(value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (boolean, "yes", "expected true or false, got 'yes'"),
        (boolean, 1, "expected true or false, got 1"),
        (seconds, 0, "expected a positive number of seconds, got 0"),
        (seconds, -1, "expected a positive number of seconds, got -1"),
        (seconds, True, "expected a positive number of seconds, got True"),
        (seconds, "30", "expected a positive number of seconds, got '30'"),
        (seconds, math.inf, "expected a positive number of seconds, got inf"),
        (seconds, math.nan, "expected a positive number of seconds, got nan"),
        (lambda v: seconds(v, zero=True), -1, "expected 0 (off) or a positive number of seconds"),
        (lambda v: seconds(v, high=60), 61, "expected more than 0 and at most 60 seconds, got 61"),
        (lambda v: seconds(v, high=60), 0, "expected more than 0 and at most 60 seconds, got 0"),
        (lambda v: seconds(v, high=60), "5s", "expected a number of seconds, got '5s'"),
        (lambda v: seconds(v, high=60), math.inf, "expected a number of seconds, got inf"),
        (lambda v: seconds(v, high=60, zero=True), -1, "expected 0 to 60 seconds, got -1"),
        (lambda v: seconds(v, high=9, wanted="0-9 s"), 10, "expected 0-9 s, got 10"),
        (whole_number, 0, "expected a positive integer, got 0"),
        (whole_number, 2.0, "expected a positive integer, got 2.0"),
        (whole_number, True, "expected a positive integer, got True"),
        (whole_number, "2", "expected a positive integer, got '2'"),
        (lambda v: whole_number(v, low=0), -1, "expected a whole number from 0 up, got -1"),
        (lambda v: whole_number(v, 1, 64), 65, "expected a whole number from 1 to 64, got 65"),
        (identifier, "CI", "expected [a-z0-9] then [a-z0-9._-] (64 at most), got 'CI'"),
        (identifier, "a-", "expected [a-z0-9] then [a-z0-9._-] (64 at most)"),
        (identifier, "a" * 65, "expected [a-z0-9] then [a-z0-9._-] (64 at most)"),
        (identifier, 7, "expected [a-z0-9] then [a-z0-9._-] (64 at most), got 7"),
        (port, 0, "port 0 out of range 1-65535"),
        (port, 65536, "port 65536 out of range 1-65535"),
        (text, 5, "expected a non-empty string (quote it), got 5"),
        (text, "  ", "expected one line of text, got '  '"),
        (text, "two\nlines", "expected one line of text, got 'two\\nlines'"),
        (name, "two words", "expected a name without spaces or ':', got 'two words'"),
        (name, "a:b", "expected a name without spaces or ':'"),
        (name, "", "expected a name without spaces or ':'"),
        (lambda v: name(v, "user name"), 5, "expected a user name without spaces or ':', got 5"),
        (strings, [], "expected a name or a list of names, got []"),
        (strings, ["a", ""], "expected a name or a list of names"),
        (strings, ["a", 1], "expected a name or a list of names"),
        (strings, "tab\there", "expected a name or a list of names"),
        (lambda v: strings(v, "glob"), None, "expected a glob or a list of globs, got None"),
        (lambda v: choice(v, LEVELS), "loud", "expected one of debug, info, off, got 'loud'"),
        (lambda v: choice(v, LEVELS), 3, "expected one of debug, info, off, got 3"),
        (lambda v: choice(v, ("base", "one"), "base or one"), "x", "expected base or one, got"),
        (lambda v: subset(v, ACTIONS), [], "expected a list of pull, push, delete, got []"),
        (lambda v: subset(v, ACTIONS), ["pull", "peek"], "expected a list of pull, push, delete"),
        (lambda v: subset(v, ACTIONS), [["pull"]], "expected a list of pull, push, delete"),
        (lambda v: file_path(v, BASE), "", "expected a file path, got ''"),
        (lambda v: file_path(v, BASE), None, "expected a file path, got None"),
        (lambda v: file_path(v, BASE), "a\0b", "expected a file path"),
        (lambda v: file_path(v, BASE), ["a"], "expected a file path, got ['a']"),
    ],
)  # fmt: skip
def test_refused(parse: Callable[[Any], Any], value: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse(value)
    assert str(raised.value).startswith(message)


def test_keyed_names_the_key_and_passes_arguments_on() -> None:
    parse = keyed(whole_number)
    assert parse(3, "pool_size", 1, 4) == 3
    with pytest.raises(BadValue, match=r"^pool_size: expected a whole number from 1 to 4, got 5$"):
        parse(5, "pool_size", 1, 4)
    with pytest.raises(BadValue, match=r"^ldap.timeout: expected more than 0 and at most 9"):
        keyed(seconds)(0, "ldap.timeout", high=9)


@given(st.floats(allow_nan=True, allow_infinity=True), st.booleans())
def test_seconds_are_finite_and_within_range(value: float, zero: bool) -> None:
    """One rule for every time setting: finite, at most the bound, 0 only where allowed."""
    accepted = math.isfinite(value) and (0 < value <= 300 or (zero and value == 0))
    try:
        assert seconds(value, high=300, zero=zero) == value and accepted
    except ValueError:
        assert not accepted
