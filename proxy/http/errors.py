"""Distribution-spec JSON error answers, each carrying the API version header (the docker
client's login looks for it on the 401 from `/v2/`), built once as bytes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus

from aiohttp import hdrs
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion10, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

from . import web

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"
SERVER = "regproxy"  # no version: it only helps attackers
JSON = "application/json; charset=utf-8"


@lru_cache(maxsize=256)
def _headers(content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> Mapping[str, str]:
    return {
        "Content-Type": content_type,
        API_VERSION_HEADER: API_VERSION,
        "Server": SERVER,
        **dict(extra),
    }


_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what aiohttp refuses in a header


@dataclass(frozen=True, slots=True)
class Built:
    """An answer's fixed bytes: what follows the status line's version up to the Date header
    (status, reason, headers, Content-Length), and the body."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    head: bytes
    body: bytes


def build(status: int, headers: Mapping[str, str], body: bytes) -> Built:
    """The bytes aiohttp's `Response` would send before its Date header, in its order."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:  # a status Python does not name: aiohttp sends no reason either
        reason = ""
    fields = CIMultiDict(headers)
    fields[hdrs.CONTENT_LENGTH] = str(len(body))
    lines = [f" {status} {reason}", *(f"{name}: {value}" for name, value in fields.items())]
    if any(_FORBIDDEN.search(line) for line in lines):
        raise ValueError(f"a control character in a header of a {status} answer")
    head = "\r\n".join(lines).encode() + b"\r\nDate: "
    return Built(status, reason, CIMultiDictProxy(fields), head, body)


class Canned(web.StreamResponse):
    """An answer whose bytes were built once (`Built`): prepared, it is written whole in one
    transport write, with the Date and Connection headers aiohttp's `Response` adds, and no
    body for HEAD. What it sends cannot change: its headers are read-only."""

    # aiohttp's Response builds, checks and serializes the same headers for every refusal,
    # and the anonymous 401 is the busiest answer there is. The state the base class's
    # methods read is set here.
    def __init__(self, built: Built) -> None:  # StreamResponse.__init__ builds what is built
        self._built = built
        self._state = {}
        self._status, self._reason = built.status, built.reason
        self._headers = built.headers  # type: ignore[assignment]  # read-only on purpose

    @property
    def body(self) -> bytes:
        return self._built.body

    @property
    def content_length(self) -> int:
        return len(self._built.body)

    @content_length.setter
    def content_length(self, value: int | None) -> None:
        raise RuntimeError("a canned answer has its length")

    def data(self, request: web.BaseRequest) -> bytes:
        """What is sent in answer to `request`, whole; it is sent after this."""
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        version = request.version
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if version == HttpVersion10 else b""
        else:
            connection = b"Connection: close\r\n" if version == HttpVersion11 else b""
        body = b"" if request.method == hdrs.METH_HEAD else self._built.body
        self._eof_sent = True
        return b"".join((b"HTTP/%d.%d" % version, self._built.head,
                         rfc822_formatted_time().encode(), b"\r\n", connection, b"\r\n",
                         body))  # fmt: skip

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")  # as aiohttp's
        data = self.data(request)
        transport.write(data)
        writer = request.writer
        writer.output_size += len(data)  # what aiohttp's error handling reads: sent already
        await writer.drain()  # a client that does not read holds pipelined answers back
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        assert not data, "a canned answer has its body"


# Built once per distinct answer: the anonymous 401 is the busiest path there is.
@lru_cache(maxsize=256)
def _built(status: int, code: str, message: str, extra: tuple[tuple[str, str], ...]) -> Built:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return build(status, _headers(JSON, extra), body.encode())


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Canned:
    """A `{"errors": [{"code", "message"}]}` answer."""
    extra = tuple(headers.items()) if headers else ()
    return Canned(_built(status, code, message, extra))


def unauthorized(realm: str, message: str = "authentication required") -> Canned:
    return error_response(
        401, "UNAUTHORIZED", message, {"WWW-Authenticate": f'Basic realm="{realm}"'}
    )


def ping_response() -> web.Response:
    """What the registry answers to an authenticated `GET /v2/`."""
    return web.Response(body=b"{}", headers=_headers("application/json"))
