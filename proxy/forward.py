"""Forwarding to the upstream registry: header rewriting and streaming in both directions.

Bodies are never buffered: the client's body is handed to the upstream as a stream, and the
upstream's answer is copied chunk by chunk with back-pressure on both sides, so a multi-GB
layer passes in constant memory. Keep-alive connections to the upstream are pooled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import metrics
from .accesslog import BYTES_KEY
from .cache import HeadCache, freshness
from .config import Timeouts
from .errors import API_VERSION, API_VERSION_HEADER, SERVER, error_response
from .routes import CATALOG_MAX

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
UPSTREAM_CONNECTIONS = 512
CHUNK = 64 * 1024
# aiohttp buffers up to twice this per upstream response before it stops reading: 16 KiB
# halves a download's memory against the default 64 KiB at the same throughput (measured:
# 16 concurrent 256 MiB downloads, one worker, +7 MiB instead of +15, ~380 MB/s each way).
UPSTREAM_READ_BUFFER = 16 * 1024
PING_FRESH = 5.0  # seconds a successful upstream ping lets the proxy answer pings itself


def _droppable(headers: CIMultiDictProxy[str]) -> set[str]:
    """Hop-by-hop headers, and any the sender named in `Connection` that is not END_TO_END.
    Names are folded ASCII-only (proxy.headers refuses anything else in a request's
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
    out[API_VERSION_HEADER] = API_VERSION
    out.setdefault("Server", SERVER)
    return out


def rewrite_location(location: str, upstream: str, public_origin: str) -> str:
    """Point a Location at the upstream's own address back at the proxy, whatever its scheme:
    the registry takes the scheme from X-Forwarded-Proto and the host from Host, so its
    address can come back as https://upstream-host:port. A Location without a port points
    there when the port is the default of either scheme (the client omits a default port
    from the Host it sends)."""
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


class Forwarder:
    """Owns the upstream connection pool; one per server process."""

    def __init__(self, keepalive: float) -> None:
        # Bounded so that no client pattern can exhaust file descriptors; far above what a
        # worker serves at once.
        connector = aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS, keepalive_timeout=keepalive)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=UPSTREAM_READ_BUFFER,
        )
        self._healthy: dict[str, float] = {}  # upstream -> when it last answered a ping
        self._heads = HeadCache()

    async def close(self) -> None:
        await self._session.close()

    def answers_pings(self, upstream: str) -> bool:
        """Whether `upstream` answered a ping within the last PING_FRESH seconds: every docker
        or podman command starts with one, and while the registry is known to be up the
        proxy can answer it without a round trip."""
        seen = self._healthy.get(upstream)
        return seen is not None and time.monotonic() - seen < PING_FRESH

    async def cached(self, request: web.BaseRequest, key: str) -> web.StreamResponse | None:
        """The remembered answer under `key` (see proxy.cache), with its Age, or None."""
        now = time.monotonic()
        entry = self._heads.get(key, now)
        if entry is None:
            return None
        response = web.StreamResponse(headers=CIMultiDict(entry.headers))
        response.headers["Age"] = str(int(now - entry.stored))
        await response.prepare(request)
        await response.write_eof()
        return response

    def forget(self, key: str) -> None:
        self._heads.drop(key)

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: str,
        raw_path: str,
        timeouts: Timeouts,
        forwarded_for: str,
        store: tuple[str, float] | None = None,
    ) -> web.StreamResponse:
        """Send `request` to `upstream` + `raw_path` (exactly as classified) and stream back;
        `store`: (key, ttl) under which a cacheable answer is remembered."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        started = time.monotonic()
        try:
            upstream_response = await self._session.request(
                request.method,
                upstream + raw_path,
                headers=request_headers(request.headers, forwarded_for),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                timeout=timeout,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.warning("upstream %s timed out on %s %s", upstream, request.method, raw_path)
            return error_response(504, "UNAVAILABLE", "upstream registry timed out")
        except aiohttp.ClientError as exc:
            log.warning("upstream %s failed on %s %s: %s", upstream, request.method, raw_path, exc)
            return error_response(502, "UNAVAILABLE", "upstream registry unreachable")
        metrics.RECORD.upstream_latency(time.monotonic() - started)
        if raw_path == "/v2/" and upstream_response.status == 200:
            self._healthy[upstream] = time.monotonic()
        async with upstream_response:
            return await self._stream_back(request, upstream_response, upstream, store)

    async def probe(self, upstream: str, timeouts: Timeouts) -> bool:
        """Whether the upstream answers `/v2/` at all (any status below 500)."""
        timeout = aiohttp.ClientTimeout(total=min(5.0, timeouts.connect + timeouts.read))
        try:
            async with self._session.get(f"{upstream}/v2/", timeout=timeout) as response:
                return response.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def catalog(
        self,
        request: web.BaseRequest,
        upstream: str,
        page: tuple[int, str],
        may_pull: Callable[[str], bool],
        timeouts: Timeouts,
        forwarded_for: str,
    ) -> web.StreamResponse:
        """`/v2/_catalog` listing only what `may_pull`, `n` at a time, with a `Link` to the next
        page as the registry gives it. Upstream pages are read until `n` are allowed."""
        n, last = page
        repositories: list[str] = []
        more = True
        try:
            while more and len(repositories) < n:
                batch, more = await self._catalog_batch(
                    request.host, upstream, last, timeouts, forwarded_for
                )
                for index, name in enumerate(batch):
                    if may_pull(name):
                        repositories.append(name)
                    if len(repositories) == n:
                        more = more or index < len(batch) - 1
                        break
                last = repositories[-1] if len(repositories) == n else (batch or [last])[-1]
                more = more and bool(batch)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return error_response(504, "UNAVAILABLE", "upstream registry timed out")
        except (aiohttp.ClientError, ValueError) as exc:
            log.warning("upstream %s catalog failed: %s", upstream, exc)
            return error_response(502, "UNAVAILABLE", "upstream registry catalog failed")
        response = web.json_response({"repositories": repositories})
        if more:
            response.headers["Link"] = f'</v2/_catalog?last={repositories[-1]}&n={n}>; rel="next"'
        response.headers[API_VERSION_HEADER] = API_VERSION
        response.headers["Server"] = SERVER
        return response

    async def _catalog_batch(
        self, host: str, upstream: str, last: str, timeouts: Timeouts, forwarded_for: str
    ) -> tuple[list[str], bool]:
        """One upstream page after `last`, and whether the registry says there is more.
        Built afresh: none of the client's headers (a Content-Length would stall it)."""
        query = f"n={CATALOG_MAX}" + (f"&last={last}" if last else "")
        timeout = aiohttp.ClientTimeout(sock_connect=timeouts.connect, sock_read=timeouts.read)
        headers = {"Host": host, "X-Forwarded-Proto": "https", "X-Forwarded-For": forwarded_for}
        async with self._session.get(
            f"{upstream}/v2/_catalog?{query}", headers=headers, timeout=timeout
        ) as response:
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            body = await response.json(content_type=None)
            names = body.get("repositories") or []
            if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                raise ValueError("malformed catalog")
            return names, "Link" in response.headers

    async def _stream_back(
        self,
        request: web.BaseRequest,
        upstream_response: aiohttp.ClientResponse,
        upstream: str,
        store: tuple[str, float] | None,
    ) -> web.StreamResponse:
        public_origin = f"https://{request.host}"
        headers = response_headers(upstream_response.headers, upstream, public_origin)
        if store is not None and upstream_response.status == 200:
            key, ttl = store
            lifetime = freshness(upstream_response.headers.get("Cache-Control", ""), ttl)
            self._heads.put(key, headers, lifetime, time.monotonic())
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
                    await response.write(chunk)
                except ConnectionError:
                    log.debug("client went away during %s %s", request.method, request.path)
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
