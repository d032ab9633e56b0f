"""A reader of Apache's common and combined access lines (and combined + %D), written from
Apache's rules, independent of proxy.observe.accesslog: fields split as log analysers split them,
each value unescaped back to the bytes that were logged (ap_escape_logitem's escapes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
LINE = re.compile(
    r"(\S+) (\S+) (.*) \[([^\]]+)\] " + _QUOTED + r" (\d{3}) (\d+|-)"
    r"(?: " + _QUOTED + " " + _QUOTED + r")?(?: (\d+))?"
)
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|[bnrtv\"\\])")
_NAMED = {"b": 8, "n": 10, "r": 13, "t": 9, "v": 11, '"': 34, "\\": 92}


@dataclass(frozen=True)
class ApacheLine:
    host: bytes
    ident: bytes
    user: bytes
    time: str
    request: bytes
    status: int
    size: int | None
    referer: bytes | None
    agent: bytes | None
    duration: int | None


def unescape(text: str) -> bytes:
    """The bytes behind an escaped value; a backslash not part of an escape is an error."""
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        out += text[position : match.start()].encode("ascii")
        code = match.group(1)
        out.append(int(code[1:], 16) if code.startswith("x") else _NAMED[code])
        position = match.end()
    rest = text[position:]
    assert "\\" not in rest and '"' not in rest, f"stray escape character in {text!r}"
    out += rest.encode("ascii")
    return bytes(out)


def parse(line: str) -> ApacheLine:
    assert line.isascii() and line.isprintable(), f"not one printable ASCII line: {line!r}"
    match = LINE.fullmatch(line)
    assert match is not None, f"not an Apache access line: {line!r}"
    host, ident, user, time, request, status, size, referer, agent, duration = match.groups()
    return ApacheLine(
        unescape(host),
        unescape(ident),
        unescape(user),
        time,
        unescape(request),
        int(status),
        None if size == "-" else int(size),
        None if referer is None else unescape(referer),
        None if agent is None else unescape(agent),
        None if duration is None else int(duration),
    )
