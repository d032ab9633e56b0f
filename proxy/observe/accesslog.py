"""Access log: one line per request in Apache's common or combined format (`combined_duration`
adds `%D`), or JSON lines, each written with one write(2) (`logsetup.SINK`)."""

from __future__ import annotations

import json
import re
import time
from typing import NamedTuple, Protocol

from aiohttp.abc import AbstractAccessLogger

from ..http import web
from .logsetup import SINK


class Logged(Protocol):
    """What the request path found out that an access line shows (its request context)."""

    @property
    def user(self) -> str | None: ...

    @property
    def client(self) -> str | None: ...  # the client as believed (trusted X-Forwarded-For)

    @property
    def sent(self) -> int | None: ...  # body bytes sent; None: the answer's Content-Length


LOGGED = web.RequestKey("regproxy.logged", Logged)  # set once, when the request arrives


class _Clock:
    """The timestamps of the current second, formatted once per second, not per request."""

    def __init__(self) -> None:
        self._second = -1
        self.common = self.iso = ""

    def tick(self) -> _Clock:
        now = int(time.time())
        if now != self._second:
            local = time.localtime(now)
            self._second = now
            self.common = time.strftime("%d/%b/%Y:%H:%M:%S %z", local)
            self.iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", local)
        return self


_NAMED = {0x08: "b", 0x0A: "n", 0x0D: "r", 0x09: "t", 0x0B: "v", 0x22: '"', 0x5C: "\\"}


# No value can forge a line or a field: escaped as Apache's ap_escape_logitem does, `\xhh`
# for every byte outside printable ASCII (C1 controls, U+2028, bidi overrides included).
def _escaped(byte: int) -> str:
    if byte in _NAMED:
        return "\\" + _NAMED[byte]
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"


_ESCAPED = tuple(_escaped(byte) for byte in range(256))
_PLAIN = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but '"' and '\\': nothing to escape


def _received(value: str) -> bytes:
    """The bytes a value arrived as: aiohttp keeps bytes that are not UTF-8 as surrogate
    escapes. Any other lone surrogate (none should occur) shows as its code point."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


def escape(value: str) -> str:
    """Apache's ap_escape_logitem over the bytes the value arrived as."""
    if _PLAIN.fullmatch(value):
        return value
    return "".join(_ESCAPED[byte] for byte in _received(value))


def json_text(value: str) -> str:
    """A value JSON can carry as text: bytes that are not UTF-8 become `\\xhh`."""
    return _received(value).decode("utf-8", "backslashreplace")


class Entry(NamedTuple):  # made per request: a tuple is made in C, a frozen dataclass is not
    """What one access line says, as received (surrogate escapes for non-UTF-8 bytes)."""

    client: str
    user: str
    method: str
    target: str
    version: str
    status: int
    size: int | None
    referer: str | None  # None: no Referer header
    agent: str | None
    seconds: float


def apache_line(entry: Entry, fmt: str, stamp: str) -> str:
    """`common`: %h %l %u %t "%r" %>s %b; `combined` adds "%{Referer}i" "%{User-Agent}i",
    `combined_duration` then %D. Every value escaped (`escape`); absent ones are `-`."""
    request = escape(f"{entry.method} {entry.target} HTTP/{entry.version}")
    text = f'{escape(entry.client or "-")} - {escape(entry.user or "-")} [{stamp}] "{request}"'
    text += f" {entry.status} {entry.size or '-'}"
    if fmt != "common":
        referer = "-" if entry.referer is None else escape(entry.referer)
        agent = "-" if entry.agent is None else escape(entry.agent)
        text += f' "{referer}" "{agent}"'
    if fmt == "combined_duration":
        text += f" {int(entry.seconds * 1_000_000)}"
    return text


def json_line(entry: Entry, stamp: str) -> str:
    return json.dumps(
        {
            "time": stamp,
            "client": json_text(entry.client or "-"),
            "user": json_text(entry.user or "-"),
            "method": json_text(entry.method),
            "path": json_text(entry.target),
            "status": entry.status,
            "bytes": entry.size or 0,
            "duration_ms": round(entry.seconds * 1000, 3),
            "user_agent": json_text(entry.agent or ""),
        },
        ensure_ascii=True,
    )


class AccessLogger(AbstractAccessLogger):
    format = "common"
    clock = _Clock()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        if self.format == "off":
            return
        version = request.version
        seen = request.get(LOGGED)  # None: aiohttp answered before the request path ran
        sent = seen.sent if seen is not None else None
        entry = Entry(
            (seen.client if seen is not None else None) or request.remote or "",
            (seen.user if seen is not None else None) or "",
            request.method,
            request.raw_path,
            f"{version.major}.{version.minor}",
            response.status,
            sent if sent is not None else response.content_length,
            request.headers.get("Referer"),
            request.headers.get("User-Agent"),
            time_,
        )
        clock = self.clock.tick()
        if self.format == "json":
            SINK.write(json_line(entry, clock.iso))
        else:
            SINK.write(apache_line(entry, self.format, clock.common))


def access_logger_class(fmt: str) -> type[AccessLogger]:
    """An AccessLogger subclass bound to one format (aiohttp instantiates it itself)."""
    return type("BoundAccessLogger", (AccessLogger,), {"format": fmt})
