"""proxy.http.headers reads a request's headers as the Go registry does, or refuses them.

The properties compare the proxy's reading with tests/unit/go_reference.py, a transcription of
Go 1.19's net/http and mime over raw bytes and full Unicode.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.http.headers import (
    _REMEMBERED,
    MediaType,
    Reading,
    Unreadable,
    _read,
    _remembered,
    parse_media_type,
    read,
)
from tests.unit import go_reference as go

AUTH = b"Basic " + base64.b64encode(b"push:pw")
HOST = (b"Host", b"registry.example:5043")


def reading(*headers: tuple[bytes, bytes], http11: bool = True) -> Reading:
    result = read([HOST, *headers], http11)
    assert isinstance(result, Reading), result
    return result


# What docker, podman/skopeo (containers/image), containerd and ORAS send, by request kind.
CLIENT_REQUESTS = {
    "ping": [(b"User-Agent", b"docker/24.0.7 go/go1.20.10 (linux)"), (b"Accept-Encoding", b"gzip")],
    "upload start": [
        (b"Authorization", AUTH),
        (b"Content-Length", b"0"),
        (b"User-Agent", b"containers/5.28.0 (github.com/containers/image)"),
    ],
    "upload start with mount": [(b"Content-Length", b"0"), (b"Content-Type", b"")],
    "chunk": [
        (b"Content-Type", b"application/octet-stream"),
        (b"Content-Range", b"0-1023"),
        (b"Content-Length", b"1024"),
    ],
    "streamed chunk": [
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Type", b"application/octet-stream"),
    ],
    "manifest put": [
        (b"Content-Type", b"application/vnd.docker.distribution.manifest.v2+json"),
        (b"Content-Length", b"528"),
    ],
    "oci manifest put": [
        (b"Content-Type", b"application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
        (b"Content-Length", b"1"),
    ],
    "ranged pull": [(b"Range", b"bytes=1048576-"), (b"Accept", b"*/*")],
    "expect": [(b"Expect", b"100-continue"), (b"Content-Length", b"10")],
    "through a proxy": [
        (b"X-Forwarded-For", b"10.0.0.1, 10.0.0.2"),
        (b"X-Forwarded-For", b"10.0.0.3"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Connection", b"keep-alive, Upgrade"),
    ],
    "utf-8 where nothing reads it": [(b"User-Agent", "Jürgen's tool ✓".encode())],
}


@pytest.mark.parametrize("kind", list(CLIENT_REQUESTS))
def test_what_registry_clients_send_is_read(kind: str) -> None:
    assert not reading(*CLIENT_REQUESTS[kind]).form


@pytest.mark.parametrize(
    ("headers", "media_type", "length", "chunked"),
    [
        ([], None, 0, False),
        ([(b"Content-Length", b"0")], None, 0, False),
        ([(b"content-length", b" 007 ")], None, 7, False),
        ([(b"Content-Length", b"5"), (b"Content-Length", b"5")], None, 5, False),
        ([(b"Content-Length", b"")], None, 0, False),  # fixLength: an empty value is none
        ([(b"Content-Length", b"9223372036854775807")], None, (1 << 63) - 1, False),
        ([(b"Transfer-Encoding", b"ChUnKeD")], None, -1, True),
        ([(b"Content-Type", b" Application/JSON ;Charset=UTF-8")], "application/json", 0, False),
        ([(b"Content-Type", b"a/b;")], "a/b", 0, False),  # one trailing ';' is ignored
        ([(b"Content-Type", b"a/{b}")], "a/{b}", 0, False),  # '{' is a mime token char
        ([(b"Content-Type", b"")], None, 0, False),
        ([(b"Content-Type", b"x"), (b"content-type", b"x")], "x", 0, False),
    ],
)
def test_readings(
    headers: list[tuple[bytes, bytes]], media_type: str | None, length: int, chunked: bool
) -> None:
    got = reading(*headers)
    assert (got.media_type and got.media_type.type, got.content_length, got.chunked) == (
        media_type,
        length,
        chunked,
    )


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/form-data; boundary=x",
        b"MULTIPART/Form-Data; boundary=x",
        b"multipart/form-data",  # no boundary: Go would not read it, but it is a form type
        b"application/x-www-form-urlencoded",
        b"\tApplication/X-WWW-Form-Urlencoded ; charset=utf-8",
    ],
)
def test_form_types(content_type: bytes) -> None:
    assert reading((b"Content-Type", content_type)).form


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        # The bypass: Go's strings.ToLower maps U+0130 to 'i', Python's to 'i' + U+0307.
        ([(b"Content-Type", "multİpart/form-data; boundary=x".encode())], 400, "ASCII"),
        ([(b"Content-Type", "applİcation/x-www-form-urlencoded".encode())], 400, "ASCII"),
        ([(b"Content-Type", b"\xc2\xa0multipart/form-data")], 400, "ASCII"),  # NBSP
        ([(b"Content-Type", b"multipart/form-data\xff")], 400, "ASCII"),
        ([(b"Content-Type", b"a/b; c")], 400, "Content-Type"),  # ErrInvalidMediaParameter
        ([(b"Content-Type", b"a/b; c=1; C=2")], 400, "Content-Type"),  # duplicate
        ([(b"Content-Type", b"a/b; c*=utf-8''x")], 400, "Content-Type"),  # RFC 2231
        ([(b"Content-Type", b"a/b/c")], 400, "Content-Type"),
        ([(b"Content-Type", b'a/b; c="d')], 400, "Content-Type"),
        ([(b"Content-Type", b"a/b"), (b"Content-Type", b"c/d")], 400, "several"),
        ([(b"Content-Length", "\u0667".encode())], 400, "ASCII"),
        ([(b"Content-Length", b"+7")], 400, "Content-Length"),
        ([(b"Content-Length", b"7_0")], 400, "Content-Length"),
        ([(b"Content-Length", b"9223372036854775808")], 400, "Content-Length"),
        ([(b"Content-Length", b"5"), (b"Content-Length", b"6")], 400, "several"),
        ([(b"Transfer-Encoding", b"gzip")], 400, "chunked"),
        ([(b"Transfer-Encoding", b"chunked, chunked")], 400, "chunked"),
        ([(b"Transfer-Encoding", b"chunked")] * 2, 400, "chunked"),
        ([(b"Transfer-Encoding", "chunKed".replace("K", "\u212a").encode())], 400, "ASCII"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], 400, "together"),
        ([(b"Authorization", "Ba\u017fic eDp5".encode())], 400, "ASCII"),
        ([(b"Authorization", b"Basic a"), (b"Authorization", b"Basic b")], 400, "several"),
        ([(b"Host", b"other")], 400, "several"),
        ([(b"Connection", b"keep-alive, H\xc3\xb6st")], 400, "ASCII"),
        ([(b"Connection", b"a b")], 400, "Connection"),
        ([(b"X-Forwarded-Proto", "http\u017f".encode())], 400, "ASCII"),
        ([(b"Range", b"bytes=0-\xe2\x80\xa8")], 400, "ASCII"),
        ([(b"Content-Range", b"0-1"), (b"Content-Range", b"0-2")], 400, "several"),
        ([(b"Expect", b"100-continue-please")], 417, "100-continue"),
        ([(b"X-A", b"a\x01b")], 400, "control"),
        ([(b"X A", b"b")], 400, "name"),
        ([("Ho\u017ft".encode(), b"b")], 400, "name"),
    ],
)
def test_refusals(headers: list[tuple[bytes, bytes]], status: int, message: str) -> None:
    result = read([HOST, *headers])
    assert isinstance(result, Unreadable)
    assert result.status == status and message in result.message


def test_host_rules_are_go_s() -> None:
    assert read([], http11=True) == Unreadable("missing Host header")
    assert isinstance(read([], http11=False), Reading)  # HTTP/1.0 needs none
    assert isinstance(read([(b"Host", "é".encode())]), Unreadable)
    assert isinstance(read([(b"Host", b"a b")]), Unreadable)
    assert isinstance(read([(b"Host", b"[::1]:5043")]), Reading)


def test_transfer_encoding_on_http10_is_refused() -> None:
    """Go ignores it there (the body then has no length); aiohttp would decode it."""
    assert isinstance(read([(b"Transfer-Encoding", b"chunked")], http11=False), Unreadable)


# Parameters as Go's own mime tests expect them (mediatype_test.go, Go 1.19).
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'form-data; name="foo"', ("form-data", {"name": "foo"})),
        (b" form-data ; name=foo", ("form-data", {"name": "foo"})),
        (b'FORM-DATA;name="foo"', ("form-data", {"name": "foo"})),
        (
            b'form-data; key=value;  blah="value";name="foo" ',
            ("form-data", {"key": "value", "blah": "value", "name": "foo"}),
        ),
        (b"foo; key=val1; key=the-key-appears-again-which-is-bogus", None),
        (b'attachment; filename="f\\oo.html"', ("attachment", {"filename": "f\\oo.html"})),
        (
            b'attachment; filename="\\"quoting\\" tested.html"',
            ("attachment", {"filename": '"quoting" tested.html'}),
        ),
        (
            b'attachment; foo="\\"\\\\";filename="foo.html"',
            ("attachment", {"foo": '"\\', "filename": "foo.html"}),
        ),
        (b"attachment; filename=foo.html ;", ("attachment", {"filename": "foo.html"})),
        (b"attachment; filename='foo.html'", ("attachment", {"filename": "'foo.html'"})),
        (b'a/b; c=""', ("a/b", {"c": ""})),
        (b"a/b;;", None),
        (b"a/b; c=d e=f", None),
        (b"", None),
        (b"/b", None),
    ],
)
def test_parse_media_type_as_go(value: bytes, expected: tuple[str, dict[str, str]] | None) -> None:
    parsed = parse_media_type(value)
    assert (parsed and (parsed.type, dict(parsed.params))) == expected
    ref = go.parse_media_type(go.go_string(value))
    assert (None if ref.error else (ref.media_type, ref.params)) == expected


def test_the_bypass_is_real_in_go_and_invisible_to_python_lower() -> None:
    """Why the proxy may not use str.lower(): the issue's Content-Type, by each reading."""
    value = "multİpart/form-data; boundary=x"
    assert value.split(";")[0].strip().lower() != "multipart/form-data"  # what main did
    request = go.read_request([HOST, (b"Content-Type", value.encode())], http11=True)
    assert isinstance(request, go.GoRequest) and request.reads_form("POST")
    assert isinstance(read([HOST, (b"Content-Type", value.encode())]), Unreadable)


# -- properties ----------------------------------------------------------------------------

# Pieces that matter to Go's reading, including the letters and spaces where Unicode folding
# or trimming differs from Python's, and bytes that are not UTF-8.
_PIECES = [
    "multipart", "form-data", "application", "x-www-form-urlencoded", "/", ";", "=", '"', "\\",
    " ", "\t", "boundary", "charset", "*", "'", "%41", "a", "B", "{", "İ", "\u0131", "K",
    "\u017f", "ﬀ", "Σ", "\u00a0", "\x85", "\u2028", "\u3000", "\x1c", "\x0b", "é", "\udcff",
    "\x7f", "chunked", "0", "7", "+", "-", "\u0667", "100-continue", ",",
]  # fmt: skip
_TEXT = st.lists(
    st.sampled_from(_PIECES) | st.characters(codec="utf-8") | st.characters(max_codepoint=127),
    max_size=10,
).map("".join)
_RAW = _TEXT.map(lambda text: text.encode("utf-8", "surrogateescape")).filter(
    lambda raw: b"\r" not in raw and b"\n" not in raw and b"\x00" not in raw
)
_NAMES = st.sampled_from(
    [b"Content-Type", b"content-type", b"CONTENT-TYPE", b"Content-Length", b"content-LENGTH",
     b"Transfer-Encoding", b"transfer-encoding", b"Host", b"HOST", b"Expect", b"Authorization",
     b"Connection", b"Range", b"X-Forwarded-Host", b"X-Other"]
)  # fmt: skip
_HEADERS = st.lists(st.tuples(_NAMES, _RAW), max_size=5)
_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])


def _ascii(raw: bytes) -> bool:
    return all(0x20 <= b < 0x7F or b == 0x09 for b in raw)


@given(_RAW)
@example("multİpart/form-data; boundary=x".encode())
@example(b"a/b; c*=utf-8''x")
def test_media_type_is_go_s_on_ascii_and_refused_beyond(value: bytes) -> None:
    """On printable ASCII, parse_media_type is Go's ParseMediaType (None where Go reports
    any error, and for RFC 2231 names); anything else never reaches it (read() refuses)."""
    ref = go.parse_media_type(go.go_string(value))
    if not _ascii(value):
        assert isinstance(read([HOST, (b"Content-Type", value)]), Unreadable)
        return
    expected = None
    if not ref.error and ref.params is not None and not ref.rfc2231:
        expected = MediaType(ref.media_type, tuple(ref.params.items()))
    parsed = parse_media_type(value.strip(b" \t"))
    assert (parsed and (parsed.type, dict(parsed.params))) == (
        expected and (expected.type, dict(expected.params))
    )


@given(_HEADERS, _METHODS, st.booleans())
@example([(b"Content-Type", "multİpart/form-data; boundary=x".encode())], "POST", True)
@example([(b"Content-Type", "applİcation/x-www-form-urlencoded".encode())], "PUT", True)
@example([(b"Transfer-Encoding", "chun\u212aed".encode())], "PATCH", True)
@example([(b"Content-Length", b" 7"), (b"content-length", b"7 ")], "POST", True)
def test_the_proxy_reads_every_request_as_go_does(
    headers: list[tuple[bytes, bytes]], method: str, http11: bool
) -> None:
    """Whatever the proxy accepts, Go accepts and reads the same way: the same body length,
    chunked or not, the same media type and parameters, and no form the proxy did not see."""
    headers = [HOST, *headers]
    ours = read(headers, http11)
    if isinstance(ours, Unreadable):
        return
    theirs = go.read_request(headers, http11)
    assert isinstance(theirs, go.GoRequest), theirs
    assert (ours.content_length, ours.chunked) == (theirs.content_length, theirs.chunked)
    content_type = theirs.get(b"Content-Type")
    if content_type:
        ref = go.parse_media_type(content_type)
        assert ours.media_type is not None and not ref.error and ref.params is not None
        assert (ours.media_type.type, dict(ours.media_type.params)) == (ref.media_type, ref.params)
    else:
        assert ours.media_type is None
    if theirs.reads_form(method):
        assert ours.form
    assert ours.expect_continue == go.has_token(theirs.get(b"Expect"), "100-continue")


_INTERPRETED = [
    b"content-type", b"content-length", b"transfer-encoding", b"host", b"expect",
    b"authorization", b"connection", b"range", b"content-range", b"x-forwarded-for",
    b"x-forwarded-port", b"forwarded",
]  # fmt: skip


@given(st.sampled_from(_INTERPRETED), _RAW.filter(lambda raw: not raw.isascii()))
def test_anything_beyond_ascii_in_an_interpreted_header_is_refused(
    name: bytes, value: bytes
) -> None:
    headers = [(name, value)] if name == b"host" else [HOST, (name, value)]
    assert isinstance(read(headers), Unreadable)


@given(_HEADERS, st.booleans(), st.integers(min_value=0, max_value=9000))
def test_a_remembered_reading_is_the_reading(
    headers: list[tuple[bytes, bytes]], http11: bool, padding: int
) -> None:
    """Readings are remembered: on first sight and on every repeat, the answer is the one a
    fresh reading gives."""
    headers = [*headers, (b"X-Padding", b"p" * padding)]
    fresh = _read(tuple(headers), http11)
    assert read(headers, http11) == fresh
    assert read(list(headers), http11) == fresh


def test_what_is_remembered_holds_no_credential_and_is_bounded() -> None:
    secret = base64.b64encode(b"push:a-password")
    read([HOST, (b"Authorization", b"Basic " + secret)])
    read([HOST, (b"X-" + b"n" * 4000, b"")])
    assert all(secret not in key and len(key) == 16 for key in _remembered)
    for n in range(_REMEMBERED + 100):
        read([HOST, (b"X-Request", str(n).encode())])
    assert len(_remembered) == _REMEMBERED
    assert read([HOST, (b"X-Request", b"0")]) == _read(((*HOST,), (b"X-Request", b"0")), True)
