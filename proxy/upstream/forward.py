"""Forwarding to the upstream registry: header rewriting, and bodies streamed both ways with
back-pressure, never buffered, over a pool of keep-alive connections."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ..core.limits import Capacity, FairSlots, Limits, Pace, Timeouts, Watchdog
from ..http import clienttls, web
from ..http.bodies import read_whole
from ..http.errors import API_VERSION, API_VERSION_HEADER, SERVER, error_response
from ..observe import metrics
from .client import upstream_session

log = logging.getLogger("regproxy.forward")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# End-to-end headers the proxy or the registry rely on: a `Connection` header may not name
# them away (`Connection: Host` would make the registry build Locations from its own address).
END_TO_END = frozenset(
    {
        # the request: routing, framing, credentials, what the registry reads
        "host",
        "authorization",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "content-range",
        "range",
        "expect",
        "accept",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "forwarded",
        # the answer: what registry clients read
        "location",
        "www-authenticate",
        "docker-content-digest",
        "docker-upload-uuid",
        "docker-distribution-api-version",
        "link",
        "etag",
        "last-modified",
        "cache-control",
        "oci-subject",
        "oci-filters-applied",
    }
)
# Consumed or set by the proxy itself; never passed through from the client (nor any other
# X-Forwarded-*: the registry reads X-Forwarded-Port, for one, to build Locations).
_CLIENT_ONLY = frozenset(
    {
        "authorization",
        "forwarded",
        # Method overrides are never honoured here; nothing behind us may honour them either.
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
# The most one write to the client carries. Each piece costs a pass through the loop, the
# response writer and the ssl object whatever its size, so larger pieces cost less CPU per
# byte; a download holds about two at a time (one being encrypted, one in the send buffer).
CHUNK = 128 * 1024
_BUSY = {"Retry-After": "5"}  # when every upstream connection is busy
_LINK_TARGET = re.compile(r"<([^>]*)>")  # the URI of each link in a Link header


def _droppable(headers: CIMultiDictProxy[str]) -> set[str]:
    """Hop-by-hop headers, and any the sender named in `Connection` that is not END_TO_END."""
    # Names are folded ASCII-only (proxy.http.headers refuses anything else in a request's
    # Connection header): no Unicode case mapping turns one name into another.
    named = {
        token.strip(" \t").encode().lower().decode()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    return set(HOP_BY_HOP) | (named - END_TO_END)


def _client_only(name: str) -> bool:
    return name in _CLIENT_ONLY or name.startswith("x-forwarded-")


def request_headers(headers: CIMultiDictProxy[str], forwarded_for: str) -> CIMultiDict[str]:
    """Client headers as the upstream should see them: Host kept, proxy headers set."""
    drop = _droppable(headers)
    out = CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if (name := k.lower()) not in drop and not _client_only(name)
    )
    out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = "https"
    return out


def response_headers(
    headers: CIMultiDictProxy[str], upstream: str, public_origin: str
) -> CIMultiDict[str]:
    """Upstream headers for the client: hop-by-hop dropped, API version once, Location fixed."""
    drop = _droppable(headers) | {API_VERSION_HEADER.lower()}
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    if "Location" in out:
        out["Location"] = rewrite_location(out["Location"], upstream, public_origin)
    if "Link" in out:  # paging of tag lists and referrers
        links = [
            _LINK_TARGET.sub(lambda m: f"<{rewrite_location(m[1], upstream, public_origin)}>", v)
            for v in out.popall("Link")
        ]
        out.extend(("Link", link) for link in links)
    out[API_VERSION_HEADER] = API_VERSION
    out.setdefault("Server", SERVER)
    return out


def rewrite_location(location: str, upstream: str, public_origin: str) -> str:
    """Point a Location (or a Link's URI) at the upstream's own address back at the proxy,
    whatever its scheme (the registry takes it from X-Forwarded-Proto)."""
    # A Location without a port points there when the port is the default of either scheme:
    # the client omits a default port from the Host it sends.
    try:
        parts, base = urlsplit(location), urlsplit(upstream)
        port, base_port = parts.port, base.port or _default_port(base.scheme)
    except ValueError:  # a port that is not a number: not the upstream's address
        return location
    ports = {port} if port else {_default_port(parts.scheme), _default_port(base.scheme)}
    if not parts.netloc or parts.hostname != base.hostname or base_port not in ports:
        return location
    return public_origin + location[location.find("//") + 2 + len(parts.netloc) :]


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True)
class Route:
    """Where one request goes: the registry, the raw path and query exactly as classified, and
    the X-Forwarded-For to send."""

    upstream: str
    raw_path: str
    forwarded_for: str


class Answer:
    """The registry's answer to a forwarded request before anything is sent: a guard may
    change the headers, or read the body whole (then the bytes read are what is sent)."""

    def __init__(self, response: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> None:
        self._response = response
        self.status = response.status
        self.headers = headers
        self._body: bytes | None = None

    async def read(self, limit: int) -> bytes:
        """The whole body (TooLarge past `limit` bytes), kept to be sent as read."""
        if self._body is None:
            self._body = await read_whole(self._response.content, limit)
        return self._body

    async def send(
        self, request: web.BaseRequest, idle: float, rate: int
    ) -> tuple[web.StreamResponse, int]:
        """Stream the answer to the client; the response and the body bytes sent. A slow
        reader or an upstream that breaks off cuts the connection, so a short body is never
        passed off as complete."""
        response = web.StreamResponse(
            status=self.status, reason=self._response.reason, headers=self.headers
        )
        await response.prepare(request)
        if self._body is not None:
            await response.write(self._body)
            await response.write_eof()
            return response, len(self._body)
        sent = 0
        loop = asyncio.get_running_loop()
        pace = Pace(rate, idle, loop.time())
        # A write past its deadline is ended by cutting the connection, which wakes it.
        watchdog = Watchdog(loop, idle, pace, lambda: _too_slow(request, rate))
        try:
            # Bounded pieces: a transfer never holds more than aiohttp's read buffer plus one
            # chunk (iter_any() would join everything buffered into one large copy).
            async for chunk in self._response.content.iter_chunked(CHUNK):
                watchdog.started(loop.time())
                try:
                    await response.write(chunk)
                except ConnectionError:
                    if not watchdog.stalled:
                        log.debug("client went away during %s %s", request.method, request.path)
                        _cut(request)
                    return response, sent
                watchdog.finished()
                if watchdog.stalled:
                    return response, sent
                sent += len(chunk)
                if not pace.moved(len(chunk), loop.time()):
                    _too_slow(request, rate)
                    return response, sent
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream broke off %s %s: %r", request.method, request.path, exc)
            _cut(request)
            return response, sent
        finally:
            watchdog.close()
        await response.write_eof()
        return response, sent


def _too_slow(request: web.BaseRequest, rate: int) -> None:
    log.info(
        "client stopped reading or reads under %s B/s: %s %s", rate, request.method, request.path
    )
    _cut(request)


def _cut(request: web.BaseRequest) -> None:
    """Close the client's connection at once: its answer has started and cannot end well."""
    if request.transport is not None:
        request.transport.abort()


class Forwarder:
    """Owns the upstream connection pool (bounded, shared fairly); one per worker process."""

    def __init__(self, room: Capacity, keepalive: float) -> None:
        self._room = room
        connections = room.forwarded + room.own  # more than `upstream` when it is tiny
        self.session = upstream_session(connections, keepalive)
        self._slots = FairSlots(room.forwarded)  # the rest are the proxy's own (Registry)

    async def close(self) -> None:
        await self.session.close()

    @contextlib.asynccontextmanager
    async def exchange(
        self,
        request: web.BaseRequest,
        *,
        route: Route,
        owner: str,
        limits: Limits,
        timeouts: Timeouts,
        body: bytes | None = None,
    ) -> AsyncIterator[Answer | web.StreamResponse]:
        """Send `request` (with `body` when a guard read it whole): the registry's answer,
        unsent, or the proxy's own (503 no connection free within the wait, 502, 504, 408)."""
        wait, share = limits.upstream_wait, self._room.per_user(limits)
        if not await self._slots.acquire(owner, share, wait):
            log.warning("no upstream connection free within %ss for %s", wait, route.raw_path)
            metrics.RECORD.fair_share_refused("upstream_wait")
            yield error_response(503, "UNAVAILABLE", "registry busy, retry later", _BUSY)
            return
        try:
            with metrics.RECORD.forwarding():
                upstream_response = await self._send(request, route, timeouts, limits, body)
                if isinstance(upstream_response, web.StreamResponse):
                    yield upstream_response
                    return
                async with upstream_response:
                    public_origin = f"https://{request.host}"
                    headers = response_headers(
                        upstream_response.headers, route.upstream, public_origin
                    )
                    yield Answer(upstream_response, headers)
        finally:
            self._slots.release(owner)

    async def _send(
        self,
        request: web.BaseRequest,
        route: Route,
        timeouts: Timeouts,
        limits: Limits,
        read: bytes | None,
    ) -> aiohttp.ClientResponse | web.StreamResponse:
        """The upstream's response to `request`, or the proxy's answer when there is none."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        body: io.BytesIO | AsyncIterator[bytes] | None = None
        if read is not None:
            body = io.BytesIO(read)  # sent in pieces, with its Content-Length
        elif request.body_exists:
            body = paced_body(request, timeouts.client_idle, limits.min_rate)
        started = time.monotonic()
        try:
            response = await self.session.request(
                request.method,
                route.upstream + route.raw_path,
                headers=request_headers(request.headers, route.forwarded_for),
                data=body,
                allow_redirects=False,
                timeout=timeout,
                ssl=clienttls.for_url(route.upstream),
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.warning(
                "upstream %s timed out on %s %s", route.upstream, request.method, route.raw_path
            )
            return error_response(504, "UNAVAILABLE", "upstream registry timed out")
        except aiohttp.ClientError as exc:
            if _caused_by(exc, ClientStalled):
                log.info("client stopped sending its body: %s %s", request.method, route.raw_path)
                return await closing(
                    request, error_response(408, "UNKNOWN", "request body stalled")
                )
            log.warning(
                "upstream %s failed on %s %s: %s",
                route.upstream,
                request.method,
                route.raw_path,
                exc,
            )
            return error_response(502, "UNAVAILABLE", "upstream registry unreachable")
        metrics.RECORD.upstream_latency(time.monotonic() - started)
        return response


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain (aiohttp wraps errors from the request body)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def closing(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
    """Send `response` and close the connection (its request body was not read to the end)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


class ClientStalled(aiohttp.ClientError):
    """The client sent nothing of its request body for `timeouts.client_idle` seconds."""


async def paced_body(request: web.BaseRequest, idle: float, rate: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, ended with ClientStalled when the client goes quiet
    for `idle` seconds or sends slower than `rate` bytes a second, window after window."""
    content, loop = request.content, asyncio.get_running_loop()
    pace = Pace(rate, idle, loop.time())
    stalled = ClientStalled(f"no body data for {idle:g}s or slower than {rate} B/s")
    # A read past its deadline is ended by the exception, which wakes it.
    watchdog = Watchdog(loop, idle, pace, lambda: content.set_exception(stalled))
    try:
        while True:
            watchdog.started(loop.time())
            chunk = await content.readany()
            watchdog.finished()
            if not chunk:
                return
            if not pace.moved(len(chunk), loop.time()):
                raise ClientStalled(f"body slower than {rate} B/s")
            yield chunk
    finally:
        watchdog.close()
