"""Access lines no value can forge: Apache's escaping, read back by an independent parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.observe.accesslog import Entry, apache_line, escape, json_line, json_text
from tests import apache_log

STAMP = "23/Nov/2026:18:24:33 +0000"


def received(raw: bytes) -> str:
    """A value as aiohttp hands it over: bytes that are not UTF-8 as surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("docker/24.0.7 go/go1.20.10 (linux)", "docker/24.0.7 go/go1.20.10 (linux)"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ('\\"', '\\\\\\"'),  # the `common` forgery of the issue: \" ending the field
        ("\b\n\r\t\v", "\\b\\n\\r\\t\\v"),
        ("\x00\x1b\x7f", "\\x00\\x1b\\x7f"),
        ("\u0085\u009b", "\\xc2\\x85\\xc2\\x9b"),  # C1 controls, as their UTF-8 bytes
        ("\u2028\u2029", "\\xe2\\x80\\xa8\\xe2\\x80\\xa9"),  # line and paragraph separators
        ("\u202eevil\u202c", "\\xe2\\x80\\xaeevil\\xe2\\x80\\xac"),  # bidi override
        ("Jürgen", "J\\xc3\\xbcrgen"),
        (received(b"\xff\xfe"), "\\xff\\xfe"),  # bytes that are not UTF-8, as received
    ],
)
def test_escape_is_apaches(value: str, logged: str) -> None:
    assert escape(value) == logged
    assert apache_log.unescape(logged) == value.encode("utf-8", "surrogateescape")


def test_formats_are_exactly_apaches() -> None:
    entry = Entry("127.0.0.1", "alice", "GET", "/v2/", "1.1", 200, 2, None, "curl/8", 0.002999)
    assert apache_line(entry, "common", STAMP) == (
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 200 2'
    )
    assert apache_line(entry, "combined", STAMP) == (
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 200 2 "-" "curl/8"'
    )
    assert apache_line(entry, "combined_duration", STAMP) == (
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 200 2 "-" "curl/8" 2999'
    )
    anonymous = Entry("::1", "", "HEAD", "/v2/", "1.0", 401, 0, "", None, 0.0)
    assert apache_line(anonymous, "combined", STAMP) == (
        f'::1 - - [{STAMP}] "HEAD /v2/ HTTP/1.0" 401 - "" "-"'  # empty Referer, no agent
    )


_BYTES = st.binary(max_size=40) | st.lists(
    st.sampled_from(
        [b'"', b"\\", b'\\"', b"\n", b"\r\n", b" ", b"]", b"[", b'" 200 5 "', b"\xc2\x85",
         b"\xe2\x80\xa8", b"\xe2\x80\xae", b"\xff", b"\x00", b"\x7f", b"-", b"x"]
    ),
    max_size=12,
).map(b"".join)  # fmt: skip
_HOSTILE = _BYTES.map(received)


@given(_BYTES)
def test_any_value_escapes_to_printable_ascii_and_back(raw: bytes) -> None:
    escaped = escape(received(raw))
    assert escaped.isascii() and escaped.isprintable()
    assert apache_log.unescape(escaped) == raw


@given(
    user=_HOSTILE.filter(bool),
    target=_HOSTILE,
    referer=st.none() | _HOSTILE,
    agent=st.none() | _HOSTILE,
    fmt=st.sampled_from(["common", "combined", "combined_duration"]),
)
@example(
    user='x] "GET / HTTP/1.1" 200 5 [',
    target='/v2/" 200 5 "-" "-',
    referer='\\" 200 5',
    agent="ok\nforged line",
    fmt="combined",
)
def test_hostile_values_in_every_field_read_back_exactly(
    user: str, target: str, referer: str | None, agent: str | None, fmt: str
) -> None:
    entry = Entry("10.0.0.1", user, "GET", target, "1.1", 200, 5, referer, agent, 0.25)
    parsed = apache_log.parse(apache_line(entry, fmt, STAMP))
    as_bytes = lambda value: value.encode("utf-8", "surrogateescape")  # noqa: E731
    assert (parsed.host, parsed.user, parsed.time) == (b"10.0.0.1", as_bytes(user), STAMP)
    assert parsed.request == b"GET " + as_bytes(target) + b" HTTP/1.1"
    assert (parsed.status, parsed.size) == (200, 5)
    if fmt == "common":
        assert (parsed.referer, parsed.agent, parsed.duration) == (None, None, None)
    else:
        assert parsed.referer == (b"-" if referer is None else as_bytes(referer))
        assert parsed.agent == (b"-" if agent is None else as_bytes(agent))
        assert parsed.duration == (250_000 if fmt == "combined_duration" else None)


@given(user=_HOSTILE.filter(bool), target=_HOSTILE, agent=_HOSTILE)
def test_json_lines_are_ascii_json_with_the_values_written(
    user: str, target: str, agent: str
) -> None:
    entry = Entry("10.0.0.1", user, "GET", target, "1.1", 200, 5, None, agent, 0.25)
    line = json_line(entry, "2026-11-23T18:24:33+0000")
    assert line.isascii() and line.isprintable()
    record = json.loads(line)
    for key, value in (("user", user), ("path", target), ("user_agent", agent)):
        assert record[key] == json_text(value)
        record[key].encode("utf-8")  # valid Unicode: no lone surrogate for a strict reader
        if value == json_text(value):  # valid UTF-8 comes back exactly
            assert record[key] == value


@pytest.mark.parametrize("key", ["access_log.path", "audit_log"])
def test_a_log_file_that_cannot_be_opened_is_a_problem_naming_it(key: str, tmp_path: Path) -> None:
    """The preflight checks the log files can be appended to, but one may still refuse (in
    /proc, whatever the user): a problem naming the file and the key, not a traceback."""
    from proxy.core.problems import ConfigError
    from proxy.observe.audit import audit_log
    from proxy.observe.logsetup import SINK, configure_logging

    path = Path("/proc/regproxy-cannot-be-here.log")
    handlers = list(audit_log.handlers)
    paths = (path, None) if key == "access_log.path" else (tmp_path / "access.log", path)
    try:
        with pytest.raises(ConfigError) as raised:
            configure_logging("info", *paths)
    finally:
        SINK.close()
    [problem] = raised.value.problems
    assert (problem.source, problem.line) == (str(path), 0)
    assert problem.message.startswith(f"{key}: cannot append: ")
    assert audit_log.handlers == handlers
