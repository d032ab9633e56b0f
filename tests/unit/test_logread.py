"""Access logs read back: regproxy's four formats, Apache's and nginx's defaults, by tables and
by properties (what `proxy.observe.accesslog` writes reads back as it was received, and agrees
with the independent reader in tests/apache_log.py)."""

from __future__ import annotations

import calendar
import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.observe.accesslog import Entry, apache_line, json_line
from proxy.observe.logread import (
    USUAL_LINE,
    Logged,
    apache_time,
    open_binary,
    open_log,
    parse_apache,
    parse_common,
    parse_line,
    pieces,
    read_lines,
)
from tests import apache_log

STAMP = "06/Dec/2026:10:00:00 +0000"
T = float(calendar.timegm((2026, 12, 6, 10, 0, 0)))


@pytest.mark.parametrize(
    ("line", "read"),
    [
        (  # regproxy's common (and Apache's)
            f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 200 2',
            Logged(T, "127.0.0.1", "alice", "GET", "/v2/", 200),
        ),
        (  # combined, no user
            f'::1 - - [{STAMP}] "HEAD /v2/a/manifests/1 HTTP/1.1" 401 - "-" "podman/4.3.1"',
            Logged(T, "::1", None, "HEAD", "/v2/a/manifests/1", 401),
        ),
        (  # combined_duration, a query kept
            f'10.0.0.1 - bob [{STAMP}] "POST /v2/a/blobs/uploads/?mount=sha256:1&from=b'
            ' HTTP/1.1" 202 - "-" "skopeo" 2999',
            Logged(T, "10.0.0.1", "bob", "POST", "/v2/a/blobs/uploads/?mount=sha256:1&from=b", 202),
        ),
        (  # nginx combined: a quote in the agent as \x22, the size 0
            f'10.0.0.1 - carol [{STAMP}] "GET /v2/ HTTP/1.1" 200 0 "-" "a\\x22b"',
            Logged(T, "10.0.0.1", "carol", "GET", "/v2/", 200),
        ),
        (  # Apache: a request that never came (408), TLS bytes on the port (400)
            f'10.0.0.1 - - [{STAMP}] "-" 408 -',
            Logged(T, "10.0.0.1", None, "", "-", 408),
        ),
        (
            f'10.0.0.1 - - [{STAMP}] "\\x16\\x03\\x01" 400 226 "-" "-"',
            Logged(T, "10.0.0.1", None, "", "\x16\x03\x01", 400),
        ),
        (  # escapes in the target and the user, read back to the bytes received
            f'10.0.0.1 - J\\xc3\\xbcrgen [{STAMP}] "GET /v2/a\\"b HTTP/1.1" 404 19',
            Logged(T, "10.0.0.1", "Jürgen", "GET", '/v2/a"b', 404),
        ),
        (  # an offset east of UTC, a CRLF line end
            '10.0.0.1 - d [06/Dec/2026:11:30:00 +0130] "GET /v2/ HTTP/1.0" 200 2\r\n',
            Logged(T, "10.0.0.1", "d", "GET", "/v2/", 200),
        ),
        (
            '{"time": "2026-12-06T10:00:00+0000", "client": "::1", "user": "-", "method": "GET",'
            ' "path": "/v2/_catalog?n=10", "status": 200, "bytes": 9, "duration_ms": 1.5,'
            ' "user_agent": "x"}',
            Logged(T, "::1", None, "GET", "/v2/_catalog?n=10", 200),
        ),
    ],
)
def test_each_format_reads_back(line: str, read: Logged) -> None:
    assert parse_line(line) == read


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 200',  # no size
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 2000 2',  # status of 4 digits
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1 200 2',  # unterminated quote
        '127.0.0.1 - alice [06/Dec/2026:10:00:00] "GET /v2/ HTTP/1.1" 200 2',  # no offset
        '127.0.0.1 - alice [06/Foo/2026:10:00:00 +0000] "GET /v2/ HTTP/1.1" 200 2',
        '127.0.0.1 - alice [32/Dec/2026:10:00:00 +0000] "GET /v2/ HTTP/1.1" 200 2',
        f'127.0.0.1 - alice [{STAMP}] "GET /v2/ HTTP/1.1" 200 2 "-"',  # half a combined
        '{"time": "2026-12-06T10:00:00+0000", "client": "::1"}',  # fields missing
        '{"time": "yesterday", "client": "::1", "user": "-", "method": "GET", "path": "/v2/",'
        ' "status": 200}',
        '{"time": "2026-12-06T10:00:00Z", "client": "::1", "user": "-", "method": "GET",'
        ' "path": "/v2/", "status": "200"}',  # a status that is not a number
        "{not json",
    ],
)
def test_what_is_no_access_line_is_none(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("01/Jan/1970:00:00:00 +0000", 0.0),
        ("29/Feb/2028:23:59:59 +0000", float(calendar.timegm((2028, 2, 29, 23, 59, 59)))),
        ("06/Dec/2026:05:00:00 -0500", T),
        ("06/Dec/2026:15:45:00 +0545", T),
    ],
)
def test_apache_time(text: str, moment: float) -> None:
    assert apache_time(text) == moment


@pytest.mark.parametrize(
    "text", ["06/Dec/2026:10:00:00", "06/Dec/2026:25:00:00 +0000", "06-Dec-2026:10:00:00 +0000"]
)
def test_apache_time_refuses(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        apache_time(text)


def test_plain_gzip_and_concatenated_gzip_read_alike(tmp_path: Path) -> None:
    lines = [f'127.0.0.1 - u{n} [{STAMP}] "GET /v2/ HTTP/1.1" 200 2\n' for n in range(3)]
    plain = tmp_path / "access.log"
    plain.write_text("".join(lines))
    packed = tmp_path / "access.log.1"  # no .gz: the magic bytes tell
    packed.write_bytes(
        gzip.compress(lines[0].encode()) + gzip.compress("".join(lines[1:]).encode())
    )
    for path in (plain, packed):
        with open_log(path) as read:
            assert [parse_line(line) for line in read] == [parse_line(line) for line in lines]


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.binary(max_size=20).map(
    lambda raw: raw.decode("utf-8", "surrogateescape")
)
_ENTRY = st.builds(
    Entry,
    client=st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]),
    user=_TEXT,
    method=st.sampled_from(["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]),
    target=st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).map(lambda t: "/" + t),
    version=st.sampled_from(["1.0", "1.1"]),
    status=st.integers(100, 599),
    size=st.none() | st.integers(0, 10**9),
    referer=st.none() | _TEXT,
    agent=st.none() | _TEXT,
    seconds=st.floats(0, 100),
)


def _expected(entry: Entry, method: str, target: str) -> Logged:
    user = entry.user if entry.user not in ("", "-") else None
    return Logged(T, entry.client, user, method, target, entry.status)


@given(_ENTRY, st.sampled_from(["common", "combined", "combined_duration"]))
def test_what_regproxy_writes_reads_back_as_received(entry: Entry, fmt: str) -> None:
    read = parse_line(apache_line(entry, fmt, STAMP))
    assert read is not None
    if read.method:  # a target with a space is no `METHOD TARGET HTTP/x` line: kept whole
        assert read == _expected(entry, entry.method, entry.target)
    else:
        assert read.target == f"{entry.method} {entry.target} HTTP/{entry.version}"
    independent = apache_log.parse(apache_line(entry, fmt, STAMP))
    assert independent.status == read.status
    assert independent.user.decode("utf-8", "surrogateescape") == (read.user or "-")
    request = f"{entry.method} {entry.target} HTTP/{entry.version}"
    assert independent.request == request.encode("utf-8", "surrogateescape")


@given(_ENTRY)
def test_json_lines_read_back(entry: Entry) -> None:
    line = json_line(entry, "2026-12-06T10:00:00+0000")
    read = parse_line(line)
    assert read is not None
    assert json.loads(line)["status"] == read.status
    if "\\" not in entry.target + entry.user:  # JSON shows other bytes as `\\xhh` text
        assert read == _expected(entry, entry.method, entry.target)


# Lines near the fast reader's edges: plain and odd pieces of each field, joined with single
# or odd separators, so that its refusals and the strict reader's are both exercised.
_PIECE = st.sampled_from(["-", "alice", "a b", "a [b", "a]b", 'a"b', "a\\b", "\t", "", "é", "\x85"])
_FIELD = _PIECE | st.text(st.sampled_from(' -[]"\\\tab1/HTTP.é'), max_size=8)
_STAMPS = st.sampled_from(
    [
        STAMP,
        "06/Dec/2026:10:00:00 +01",
        "06/Dec/2026:10:00:0] +0000",
        "06/Dec/2026:1 :00:00 +0000",
        "06/Foo/2026:10:00:00 +0000",
    ]
)
_REQUESTS = st.sampled_from(
    [
        "GET /v2/ HTTP/1.1",
        "-",
        "GET  /v2/ HTTP/1.1",
        "get /v2/ HTTP/1.1",
        "GET /v2/\tx HTTP/1.1",
        "GET /v2/ HTTP/1.10",
        "GET /v2/ HTTP/\u0661.1",
        'GET /v2/\\" HTTP/1.1',
        "GET /v2/ HTTP/1.1 x",
        "GÉT /v2/ HTTP/1.1",
    ]
)
_TAILS = st.sampled_from(
    [
        " 200 2",
        " 200 -",
        " 200 2 1200",
        ' 200 2 "-" "agent"',
        ' 200 2 "-" "agent" 1200',
        " 20 2",
        " 200",
        ' 200 2 "-" "a"b"',
        ' 200 2 "-"  "a"',
        ' 200 2 "-" "a" x',
        " \u0662\u0660\u0660 2",
        " 200 2 ",
        ' 200 2 "-"',
    ]
)


@given(_FIELD, _FIELD, _FIELD, _STAMPS, _REQUESTS, _TAILS, _FIELD | st.just(""))
def test_fast_reader_agrees_with_the_strict_one(
    client: str, ident: str, user: str, stamp: str, request: str, tail: str, noise: str
) -> None:
    line = f'{client} {ident} {user} [{stamp}] "{request}"{tail}'
    assert parse_common(line) == parse_apache(line)
    assert parse_common(line + noise) == parse_apache(line + noise)


@given(_ENTRY, st.sampled_from(["common", "combined", "combined_duration"]))
def test_fast_reader_agrees_on_what_regproxy_writes(entry: Entry, fmt: str) -> None:
    line = apache_line(entry, fmt, STAMP)
    assert parse_common(line) == parse_apache(line)


_RAW = st.lists(
    st.sampled_from([b"a", b"\n", b"\r", b"\xff", "é".encode(), b"\xc3", b'"', b" ", b"{"]),
    max_size=60,
).map(b"".join)


@given(_RAW, st.integers(1, 8), st.integers(1, 5))
def test_byte_ranges_read_the_lines_a_text_reader_reads(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes, most: int, chunk: int
) -> None:
    path = tmp_path_factory.mktemp("log") / "access.log"
    path.write_bytes(raw)
    with open_log(path) as text:
        expected = [line.removesuffix("\n") for line in text]
    read: list[str] = []
    ranges = pieces(path, most, smallest=1)
    assert sum(size for _, size in ranges) == len(raw)
    for start, size in ranges:
        assert start == 0 or raw[start - 1 : start] == b"\n"  # whole lines
        with open_binary(path) as binary:
            binary.seek(start)
            read += read_lines(binary, size, chunk)
    assert read == expected


@given(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=9)))
def test_the_usual_line_reads_as_parse_line_does(texts: list[str]) -> None:
    for text in texts:
        line = f'10.0.0.1 - {text or "-"} [{STAMP}] "GET /v2/{text} HTTP/1.1" 200 5\r\n'
        match = USUAL_LINE.fullmatch(line)
        if match is not None:
            client, user, _, method, target, status = match.groups()
            assert parse_line(line) == (
                apache_time(STAMP), client, None if user == "-" else user, method, target,
                int(status),
            )  # fmt: skip
