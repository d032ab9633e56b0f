"""How Go 1.19's net/http reads a request's headers, transcribed from its sources (the Go that
builds Debian's docker-registry 2.8.2), for the property tests of proxy.http.headers.

Deliberately a separate, literal transcription over arbitrary bytes and full Unicode (not the
proxy's ASCII shortcuts): Go strings are bytes, read as UTF-8 runes where a function asks for
runes, one RuneError per invalid byte. Here a Go string is a Python str decoded with
surrogateescape, so each invalid byte is one lone surrogate standing for that RuneError.
Functions are named after the Go functions they transcribe.
"""

from __future__ import annotations

from dataclasses import dataclass

TSPECIALS = '()<>@,;:\\"/[]?='  # mime/grammar.go isTSpecial
# unicode.IsSpace: Latin-1 '\t' '\n' '\v' '\f' '\r' ' ' U+0085 U+00A0; beyond, White_Space.
_GO_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# RFC 7230 tchar: httpguts.IsTokenRune / textproto's isTokenTable.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HOST_BYTES = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!$%&()*+,-.:;=['_~]"
)


def go_string(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _invalid(ch: str) -> bool:
    return "\udc80" <= ch <= "\udcff"


def is_space(ch: str) -> bool:
    return ch in _GO_SPACES


def to_lower_rune(ch: str) -> str:
    """unicode.ToLower: the simple (one rune to one rune) lowercase mapping. Python's
    str.lower() is the full mapping; they differ only where the full one is several runes:
    U+0130 'İ', whose simple mapping is U+0069 'i'."""
    if _invalid(ch):
        return "\ufffd"  # strings.Map writes RuneError for an invalid byte
    lowered = ch.lower()
    if len(lowered) != 1:
        assert ch == "\u0130", ch
        return "i"
    return lowered


def to_lower(s: str) -> str:
    """strings.ToLower"""
    if s.isascii():
        return s.encode().lower().decode()
    return "".join(to_lower_rune(ch) for ch in s)


def trim_left_space(s: str) -> str:
    """strings.TrimLeftFunc(s, unicode.IsSpace)"""
    i = 0
    while i < len(s) and is_space(s[i]):
        i += 1
    return s[i:]


def trim_space(s: str) -> str:
    """strings.TrimSpace"""
    s = trim_left_space(s)
    j = len(s)
    while j > 0 and is_space(s[j - 1]):
        j -= 1
    return s[:j]


def is_token_char(ch: str) -> bool:
    """mime/grammar.go isTokenChar"""
    return 0x20 < ord(ch) < 0x7F and ch not in TSPECIALS


def consume_token(v: str) -> tuple[str, str]:
    i = 0
    while i < len(v) and is_token_char(v[i]):
        i += 1
    return (v[:i], v[i:]) if i else ("", v)


def check_media_type_disposition(s: str) -> bool:
    typ, rest = consume_token(s)
    if not typ:
        return False
    if not rest:
        return True
    if not rest.startswith("/"):
        return False
    subtype, rest = consume_token(rest[1:])
    return bool(subtype) and not rest


def consume_value(v: str) -> tuple[str, str]:
    """mediatype.go consumeValue as of Go 1.19 (backslash escapes a tspecial only)."""
    if not v:
        return "", ""
    if v[0] != '"':
        return consume_token(v)
    out = []
    i = 1
    while i < len(v):
        r = v[i]
        if r == '"':
            return "".join(out), v[i + 1 :]
        if r == "\\" and i + 1 < len(v) and v[i + 1] in TSPECIALS:
            out.append(v[i + 1])
            i += 2
            continue
        if r in "\r\n":
            return "", v
        out.append(r)
        i += 1
    return "", v


def consume_media_param(v: str) -> tuple[str, str, str]:
    rest = trim_left_space(v)
    if not rest.startswith(";"):
        return "", "", v
    rest = trim_left_space(rest[1:])
    param, rest = consume_token(rest)
    param = to_lower(param)
    if not param:
        return "", "", v
    rest = trim_left_space(rest)
    if not rest.startswith("="):
        return "", "", v
    rest = trim_left_space(rest[1:])
    value, rest2 = consume_value(rest)
    if value == "" and rest2 == rest:
        return "", "", v
    return param, value, rest2


def _percent_hex_unescape(s: str) -> str | None:
    out, i = [], 0
    while i < len(s):
        if s[i] == "%":
            if i + 2 >= len(s) or not all(c in "0123456789abcdefABCDEF" for c in s[i + 1 : i + 3]):
                return None
            out.append(chr(int(s[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _decode_2231(v: str) -> str | None:
    parts = v.split("'", 2)
    if len(parts) != 3 or to_lower(parts[0]) not in ("us-ascii", "utf-8"):
        return None
    return _percent_hex_unescape(parts[2])


@dataclass(frozen=True)
class MediaTypeResult:
    media_type: str  # "" when Go returns "" (an error before the parameters, or a duplicate)
    params: dict[str, str] | None
    error: bool
    rfc2231: bool = False  # some parameter name had a '*'


def parse_media_type(v: str) -> MediaTypeResult:
    """mime.ParseMediaType (Go 1.19)"""
    base = v.split(";", 1)[0]
    media_type = trim_space(to_lower(base))
    if not check_media_type_disposition(media_type):
        return MediaTypeResult("", None, True)
    params: dict[str, str] = {}
    continuation: dict[str, dict[str, str]] = {}
    v = v[len(base) :]
    while v:
        v = trim_left_space(v)
        if not v:
            break
        key, value, rest = consume_media_param(v)
        if not key:
            if trim_space(rest) == ";":
                break
            return MediaTypeResult(media_type, None, True)  # ErrInvalidMediaParameter
        pmap = params
        if "*" in key:
            pmap = continuation.setdefault(key.split("*", 1)[0], {})
        if key in pmap:
            return MediaTypeResult("", None, True)  # duplicate parameter name
        pmap[key] = value
        v = rest
    for key, pieces in continuation.items():
        single = key + "*"
        if single in pieces:
            decoded = _decode_2231(pieces[single])
            if decoded is not None:
                params[key] = decoded
            continue
        buf, valid, n = [], False, 0
        while True:
            simple = f"{key}*{n}"
            if simple in pieces:
                valid = True
                buf.append(pieces[simple])
            elif simple + "*" in pieces:
                valid = True
                encoded = pieces[simple + "*"]
                decoded = _decode_2231(encoded) if n == 0 else _percent_hex_unescape(encoded)
                buf.append(decoded or "")
            else:
                break
            n += 1
        if valid:
            params[key] = "".join(buf)
    return MediaTypeResult(media_type, params, False, bool(continuation))


def canonical_key(name: bytes) -> bytes:
    """textproto.canonicalMIMEHeaderKey: ASCII only, unchanged if not a token."""
    if not all(chr(b) in _TCHAR for b in name):
        return name
    out, upper = bytearray(), True
    for b in name:
        c = (
            b - 32
            if upper and 0x61 <= b <= 0x7A
            else (b + 32 if not upper and 0x41 <= b <= 0x5A else b)
        )
        out.append(c)
        upper = c == ord("-")
    return bytes(out)


def _trim(value: bytes) -> bytes:
    """textproto trim(): spaces and tabs, both ends."""
    return value.strip(b" \t")


def _parse_uint63(s: bytes) -> int | None:
    """strconv.ParseUint(s, 10, 63)"""
    if not s or not all(0x30 <= b <= 0x39 for b in s):
        return None
    n = int(s)
    return n if n < 1 << 63 else None


def has_token(v: str, token: str) -> bool:
    """net/http header.go hasToken: ASCII case-insensitive, bounded by ' ', ',' or '\\t'."""
    if len(token) > len(v) or not token:
        return False
    if v == token:
        return True
    for sp in range(len(v) - len(token) + 1):
        if sp > 0 and v[sp - 1] not in " ,\t":
            continue
        end = sp + len(token)
        if end != len(v) and v[end] not in " ,\t":
            continue
        if v[sp:end].encode("utf-8", "surrogateescape").lower() == token.encode():
            return True
    return False


@dataclass(frozen=True)
class GoRequest:
    """What the registry's net/http makes of the request, and what its handlers would read."""

    content_length: int  # Request.ContentLength: -1 chunked, 0 none
    chunked: bool
    header: dict[bytes, list[str]]  # canonical key -> values

    def get(self, key: bytes) -> str:
        """Header.Get: the first value, or ""."""
        return self.header.get(key, [""])[0]

    def reads_form(self, method: str) -> bool:
        """Whether FormValue would read the body as a form: parsePostForm (POST, PUT, PATCH;
        the media type counts even when the parameters fail) or multipartReader (any
        method; no error, and a boundary)."""
        content_type = self.get(b"Content-Type")
        if method in ("POST", "PUT", "PATCH"):
            ct = parse_media_type(content_type or "application/octet-stream")
            if ct.media_type == "application/x-www-form-urlencoded":
                return True
        if not content_type:
            return False
        ct = parse_media_type(content_type)
        return (
            not ct.error
            and ct.media_type == "multipart/form-data"
            and ct.params is not None
            and "boundary" in ct.params
        )


@dataclass(frozen=True)
class GoError:
    reason: str


def read_request(headers: list[tuple[bytes, bytes]], http11: bool) -> GoRequest | GoError:
    """textproto.readMIMEHeader, then readRequest's checks in server.go and request.go, then
    transfer.go's readTransfer (parseTransferEncoding, fixLength), then the Expect handling
    in server.go (417 for anything but 100-continue)."""
    header: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        key = canonical_key(name)
        if not key:
            continue
        header.setdefault(key, []).append(_trim(value))
    if len(header.get(b"Host", [])) > 1:
        return GoError("too many Host headers")
    hosts = header.get(b"Host")
    if http11 and not hosts:
        return GoError("missing required Host header")
    if hosts and not all(chr(b) in _HOST_BYTES for b in hosts[0]):
        return GoError("malformed Host header")
    for key, values in header.items():
        if not key or not all(chr(b) in _TCHAR for b in key):
            return GoError("invalid header name")
        for value in values:
            if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
                return GoError("invalid header value")
    chunked = False
    encodings = header.pop(b"Transfer-Encoding", None)
    if encodings is not None and http11:
        if len(encodings) != 1:
            return GoError("too many transfer encodings")
        if encodings[0].lower() != b"chunked":  # ascii.EqualFold
            return GoError("unsupported transfer encoding")
        header.pop(b"Content-Length", None)
        chunked = True
    lengths = header.get(b"Content-Length", [])
    if len(lengths) > 1:
        if any(v.strip(b" \t\r\n") != lengths[0].strip(b" \t\r\n") for v in lengths[1:]):
            return GoError("multiple Content-Length headers")
        lengths = header[b"Content-Length"] = [lengths[0].strip(b" \t\r\n")]
    if chunked:
        length = -1
    elif lengths and (text := lengths[0].strip(b" \t\r\n")):
        parsed = _parse_uint63(text)
        if parsed is None:
            return GoError("bad Content-Length")
        length = parsed
    else:
        length = 0
    strings = {key: [go_string(v) for v in values] for key, values in header.items()}
    request = GoRequest(length, chunked, strings)
    expect = request.get(b"Expect")
    if expect and not has_token(expect, "100-continue"):
        return GoError("417 expectation failed")
    return request
