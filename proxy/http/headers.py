"""A request's headers read as the registry (Go 1.19's net/http, textproto, mime) reads them,
on raw bytes, ASCII only; anything else is refused, never guessed at. Pure."""

# Python and Go read the same bytes differently outside ASCII: Go's strings.ToLower makes
# U+0130 an ASCII 'i' (`multİpart/form-data` is multipart to Go) where str.lower() makes it
# 'i' + U+0307, and they trim different Unicode spaces. On ASCII, bytes methods fold and trim
# exactly as Go's fast paths do. The Go function each rule follows is named where it applies.

from __future__ import annotations

import hashlib
import marshal
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.lru import LRU

RawHeaders = Sequence[tuple[bytes, bytes]]

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_OWS = b" \t"  # what textproto's trim() strips from every value, both ends
# RFC 7230 token: httpguts.ValidHeaderFieldName, and the Connection list's elements.
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN = re.compile(_TCHAR)
# httpguts.ValidHeaderFieldValue: no control byte but HTAB.
_FIELD = _TCHAR + rb":[\t\x20-\x7e\x80-\xff]*"
_FIELDS = re.compile(rb"(?:" + _FIELD + rb"(?:\n" + _FIELD + rb")*)?")
# mime/grammar.go isTokenChar: 0x21-0x7e except tspecials ()<>@,;:\"/[]?= (so '{' is one).
_MIME_TOKEN = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_MEDIA_TYPE = re.compile(_MIME_TOKEN + rb"(?:/" + _MIME_TOKEN + rb")?")
_MIME_TOKEN_AT = re.compile(_MIME_TOKEN)
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')
_DIGITS = re.compile(rb"[0-9]+")
# httpguts.validHostByte
_HOST = re.compile(rb"[0-9A-Za-z!$%&()*+,\-.:;=\[\]'_~]*")
_MAX_LENGTH = (1 << 63) - 1  # strconv.ParseUint(cl, 10, 63)

# Headers read as ASCII (bytes) only. Those in _ONCE are read once by Go (Header.Get takes the
# first): several copies must agree, or the registry might read another one than we did.
_ONCE = frozenset(
    {
        b"content-type",
        b"content-length",
        b"host",
        b"authorization",
        b"expect",
        b"range",
        b"content-range",
    }
)
_LISTS = frozenset({b"transfer-encoding", b"connection", b"forwarded"})
_INTERPRETED = _ONCE | _LISTS


@dataclass(frozen=True)
class MediaType:
    """A Content-Type as Go's mime.ParseMediaType returns it."""

    type: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Reading:
    """What the request's headers say, exactly as the registry reads them."""

    media_type: MediaType | None
    content_length: int  # Go's Request.ContentLength: -1 for a chunked body, 0 for none
    chunked: bool
    expect_continue: bool = False

    @property
    def form(self) -> bool:
        """Whether Go's ParseForm or ParseMultipartForm could read the body as a form."""
        return self.media_type is not None and self.media_type.type in FORM_TYPES

    @property
    def body(self) -> bool:
        return self.content_length != 0


@dataclass(frozen=True)
class Unreadable:
    """A request the proxy will not guess about: 400 (417 for an Expect Go refuses)."""

    message: str
    status: int = 400


# A client sends the same headers on request after request (only the path changes): each
# header set's reading is remembered under a keyed hash of its exact bytes (marshal's
# encoding is unambiguous), never the bytes themselves: an entry holds no credential and
# costs the same whatever a client sends. Bounded, the least recently used first out.
_REMEMBERED = 512
_KEY = secrets.token_bytes(32)
_remembered: LRU[bytes, Reading | Unreadable] = LRU(_REMEMBERED)


def read(headers: RawHeaders, http11: bool = True) -> Reading | Unreadable:
    """The registry's reading of `headers` (raw name/value bytes, in order), or why not."""
    fields = tuple(headers)
    key = hashlib.blake2b(
        marshal.dumps((http11, fields)), key=_KEY, digest_size=16, usedforsecurity=True
    ).digest()
    reading = _remembered.get(key)
    if reading is None:
        reading = _read(fields, http11)
        _remembered.put(key, reading)
    return reading


def _read(headers: RawHeaders, http11: bool) -> Reading | Unreadable:
    # server.go readRequest: "invalid header name", "invalid header value"; one pass over
    # `name:value` lines, since neither a name nor a valid value holds a newline.
    if not _FIELDS.fullmatch(b"\n".join(name + b":" + value for name, value in headers)):
        bad_name = any(not _TOKEN.fullmatch(name) for name, _ in headers)
        return Unreadable("malformed header name" if bad_name else "control character in a value")
    values: dict[bytes, list[bytes]] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower()  # bytes: ASCII-only folding, as canonicalMIMEHeaderKey's
        if name in _INTERPRETED or name.startswith(b"x-forwarded-"):
            value = raw_value.strip(_OWS)  # textproto's trim()
            if not value.isascii():
                return Unreadable(f"{_label(name)} must be ASCII")
            values.setdefault(name, []).append(value)
    for name, found in values.items():
        if name in _ONCE and any(v != found[0] for v in found[1:]):
            return Unreadable(f"several different {_label(name)} headers")
    return _reading(values, http11)


def _label(name: bytes) -> str:
    return "-".join(part.capitalize() for part in name.decode("ascii").split("-"))


def _reading(values: dict[bytes, list[bytes]], http11: bool) -> Reading | Unreadable:
    host = values.get(b"host")
    if host is None and http11:  # server.go readRequest
        return Unreadable("missing Host header")
    if host is not None and len(host) > 1:  # request.go readRequest
        return Unreadable("several Host headers")
    if host is not None and not _HOST.fullmatch(host[0]):  # httpguts.ValidHostHeader
        return Unreadable("malformed Host header")
    for value in values.get(b"connection", []):
        if not all(_TOKEN.fullmatch(t) for t in _list(value)):
            return Unreadable("malformed Connection header")
    framing = _framing(values.get(b"transfer-encoding"), values.get(b"content-length"), http11)
    if isinstance(framing, Unreadable):
        return framing
    media_type = None
    content_type = values.get(b"content-type", [b""])[0]
    if content_type:  # empty: Go's parsePostForm takes application/octet-stream
        media_type = parse_media_type(content_type)
        if media_type is None:
            return Unreadable("malformed Content-Type")
    expect = values.get(b"expect", [b""])[0]
    # header.go hasToken: ASCII case-insensitive, bounded by space, comma or tab.
    expect_continue = bool(expect) and b"100-continue" in re.split(rb"[ ,\t]+", expect.lower())
    if expect and not expect_continue:  # server.go: anything else is 417
        return Unreadable("only Expect: 100-continue is supported", 417)
    length, chunked = framing
    return Reading(media_type, length, chunked, expect_continue)


def _list(value: bytes) -> list[bytes]:
    """A comma-separated list's non-empty elements, trimmed."""
    return [element for part in value.split(b",") if (element := part.strip(_OWS))]


def _framing(
    encodings: list[bytes] | None, lengths: list[bytes] | None, http11: bool
) -> tuple[int, bool] | Unreadable:
    """(ContentLength, chunked) by transfer.go's parseTransferEncoding and fixLength."""
    if encodings is not None:
        if not http11:
            # Go ignores Transfer-Encoding on HTTP/1.0 requests; aiohttp honours it.
            return Unreadable("Transfer-Encoding in an HTTP/1.0 request")
        if len(encodings) != 1 or encodings[0].lower() != b"chunked":  # ascii.EqualFold
            return Unreadable("Transfer-Encoding other than a single chunked")
        if lengths is not None:
            # Go drops the Content-Length; such a message smells of request smuggling.
            return Unreadable("Content-Length together with Transfer-Encoding")
        return -1, True
    if lengths is None or not lengths[0]:  # fixLength: a request without either has no body
        return 0, False
    text = lengths[0]  # copies were checked to agree, as fixLength does after TrimString
    if not _DIGITS.fullmatch(text) or int(text) > _MAX_LENGTH:  # parseContentLength
        return Unreadable("malformed Content-Length")
    return int(text), False


def parse_media_type(value: bytes) -> MediaType | None:
    """Go 1.19's mime.ParseMediaType on an ASCII value; None wherever it reports an error."""
    # The type: lower-cased and trimmed (ToLower, TrimSpace), token or token/token
    # (checkMediaTypeDisposition); then `; name=value` parameters (consumeMediaParam), one
    # trailing ';' allowed, a repeated name refused. RFC 2231 names (`name*`) are refused:
    # Go stitches them after the fact.
    base = value.partition(b";")[0]
    media_type = base.lower().strip(b" \t")
    if not _MEDIA_TYPE.fullmatch(media_type):
        return None
    params: dict[str, str] = {}
    rest = value[len(base) :]
    while rest := rest.lstrip(b" \t"):
        param = _media_param(rest)
        if param is None:
            if rest.strip(b" \t") == b";":  # "Ignore trailing semicolons."
                break
            return None  # ErrInvalidMediaParameter
        name, text, rest = param
        if name in params or "*" in name:  # "mime: duplicate parameter name"
            return None
        params[name] = text
    return MediaType(media_type.decode("ascii"), tuple(params.items()))


def _media_param(text: bytes) -> tuple[str, str, bytes] | None:
    """mediatype.go consumeMediaParam: `; token = value`, spaces allowed around each part."""
    if not text.startswith(b";"):
        return None
    match = _MIME_TOKEN_AT.match(text, len(text) - len(text[1:].lstrip(b" \t")))
    if match is None:
        return None
    name = match.group().lower().decode("ascii")
    rest = text[match.end() :].lstrip(b" \t")
    if not rest.startswith(b"="):
        return None
    rest = rest[1:].lstrip(b" \t")
    value = _media_value(rest)
    return None if value is None else (name, value[0], value[1])


def _media_value(text: bytes) -> tuple[str, bytes] | None:
    """mediatype.go consumeValue (Go 1.19): a token, or a quoted string."""
    # In the quoted string a backslash escapes only a tspecial; before anything else it is
    # kept as a literal backslash.
    if not text.startswith(b'"'):
        match = _MIME_TOKEN_AT.match(text)
        return None if match is None else (match.group().decode("ascii"), text[match.end() :])
    out = bytearray()
    i = 1
    while i < len(text):
        byte = text[i]
        if byte == ord('"'):
            return out.decode("ascii"), text[i + 1 :]
        if byte == ord("\\") and i + 1 < len(text) and text[i + 1] in _TSPECIALS:
            out.append(text[i + 1])
            i += 2
            continue
        out.append(byte)  # CR and LF, which end it in Go, never reach here (read refuses them)
        i += 1
    return None  # no closing quote
