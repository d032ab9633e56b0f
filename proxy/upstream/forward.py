"""Forwarding to the upstream registry: header rewriting and streaming in both directions.

Bodies are never buffered: the client's body is handed to the upstream as a stream, and the
upstream's answer is copied chunk by chunk with back-pressure on both sides, so a multi-GB
layer passes in constant memory. Keep-alive connections to the upstream are pooled.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..core.limits import Timeouts
from ..http.errors import API_VERSION, API_VERSION_HEADER, SERVER, error_response
from ..observe import metrics
from ..observe.accesslog import BYTES_KEY

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
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CHUNK = 64 * 1024
# aiohttp buffers up to twice this per upstream response before it stops reading: a smaller
# buffer than the default 64 KiB keeps a download's memory low at the same throughput.
UPSTREAM_READ_BUFFER = 16 * 1024
RETRY_AFTER = "5"  # seconds a client is asked to wait when every upstream connection is busy
_LINK_TARGET = re.compile(r"<([^>]*)>")  # the URI of each link in a Link header


def _droppable(headers: CIMultiDictProxy[str]) -> set[str]:
    """Hop-by-hop headers, and any the sender named in `Connection` that is not END_TO_END.
    Names are folded ASCII-only (proxy.http.headers refuses anything else in a request's
    Connection header), so no Unicode case mapping can turn one name into another."""
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
    whatever its scheme: the registry takes the scheme from X-Forwarded-Proto and the host
    from Host, so its address can come back as https://upstream-host:port. A Location without
    a port points there when the port is the default of either scheme (the client omits a
    default port from the Host it sends)."""
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


# Called with the upstream's status and headers before anything is sent to the client.
OnHeaders = Callable[[int, CIMultiDict[str]], None]


class Forwarder:
    """Owns the upstream connection pool; one per worker process.

    The pool is bounded (`connections`, from the open-files limit) and a request waits for a
    free connection at most `wait` seconds, then gets 503 with Retry-After: a client holding
    many slow uploads cannot make every other client wait without end."""

    def __init__(self, connections: int, keepalive: float) -> None:
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=keepalive)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=UPSTREAM_READ_BUFFER,
        )
        self._slots = asyncio.Semaphore(connections)

    @property
    def session(self) -> aiohttp.ClientSession:
        """For the proxy's own requests (catalog pages, health probes)."""
        return self._session

    async def close(self) -> None:
        await self._session.close()

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        timeouts: Timeouts,
        wait: float,
        on_headers: OnHeaders | None = None,
        body: bytes | None = None,
    ) -> web.StreamResponse:
        """Send `request` to the route and stream the answer back. `body`: the request's
        body, already read whole (a manifest the proxy had to see), sent as it is."""
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            log.warning("no upstream connection free within %ss for %s", wait, route.raw_path)
            return error_response(
                503, "UNAVAILABLE", "registry busy, retry later", {"Retry-After": RETRY_AFTER}
            )
        try:
            return await self._exchange(request, route, timeouts, on_headers, body)
        finally:
            self._slots.release()

    async def _exchange(
        self,
        request: web.BaseRequest,
        route: Route,
        timeouts: Timeouts,
        on_headers: OnHeaders | None,
        read: bytes | None,
    ) -> web.StreamResponse:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        body: io.BytesIO | AsyncIterator[bytes] | None = None
        if read is not None:
            body = io.BytesIO(read)  # sent in pieces, with its Content-Length
        elif request.body_exists:
            body = idle_bounded(request, timeouts.client_idle)
        started = time.monotonic()
        try:
            upstream_response = await self._session.request(
                request.method,
                route.upstream + route.raw_path,
                headers=request_headers(request.headers, route.forwarded_for),
                data=body,
                allow_redirects=False,
                timeout=timeout,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.warning(
                "upstream %s timed out on %s %s", route.upstream, request.method, route.raw_path
            )
            return error_response(504, "UNAVAILABLE", "upstream registry timed out")
        except aiohttp.ClientError as exc:
            if _caused_by(exc, ClientStalled):
                log.info("client stopped sending its body: %s %s", request.method, route.raw_path)
                response = error_response(408, "UNKNOWN", "request body stalled")
                return await closing(request, response)
            log.warning(
                "upstream %s failed on %s %s: %s",
                route.upstream,
                request.method,
                route.raw_path,
                exc,
            )
            return error_response(502, "UNAVAILABLE", "upstream registry unreachable")
        metrics.RECORD.upstream_latency(time.monotonic() - started)
        async with upstream_response:
            return await self._stream_back(request, upstream_response, route, timeouts, on_headers)

    async def _stream_back(
        self,
        request: web.BaseRequest,
        upstream_response: aiohttp.ClientResponse,
        route: Route,
        timeouts: Timeouts,
        on_headers: OnHeaders | None,
    ) -> web.StreamResponse:
        public_origin = f"https://{request.host}"
        headers = response_headers(upstream_response.headers, route.upstream, public_origin)
        if on_headers is not None:
            on_headers(upstream_response.status, headers)
        response = web.StreamResponse(
            status=upstream_response.status, reason=upstream_response.reason, headers=headers
        )
        await response.prepare(request)
        sent = 0
        try:
            # Bounded pieces: a transfer never holds more than aiohttp's read buffer plus one
            # chunk (iter_any() would join everything buffered into one large copy).
            async for chunk in upstream_response.content.iter_chunked(CHUNK):
                try:
                    async with asyncio.timeout(timeouts.client_idle):
                        await response.write(chunk)
                except (ConnectionError, TimeoutError):
                    log.debug("client went away during %s %s", request.method, request.path)
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone already: cut the connection so the client sees a truncated
            # transfer, never a short body reported as complete.
            log.warning("upstream broke off %s %s: %r", request.method, request.path, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            request[BYTES_KEY] = sent
        await response.write_eof()
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


async def idle_bounded(request: web.BaseRequest, idle: float) -> AsyncIterator[bytes]:
    """The request body as it arrives, ended with ClientStalled when the client goes quiet."""
    content = request.content
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        except TimeoutError:
            raise ClientStalled(f"no body data for {idle:g}s") from None
        if not chunk:
            return
        yield chunk
