"""The proxy's own requests to a registry (tag checks, catalog pages, health probes): one set
of headers and timeouts, bounded body reads, every failure an `UpstreamError`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

from ..core.limits import Timeouts
from ..http.bodies import TooLarge, read_whole

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# aiohttp buffers up to twice this per upstream response before it stops reading: a smaller
# buffer than the default 64 KiB keeps a download's memory low at the same throughput.
UPSTREAM_READ_BUFFER = 16 * 1024


def upstream_session(connections: int, keepalive: float) -> aiohttp.ClientSession:
    """The connections to registries: bytes passed as they are (no decompression, no
    cookies, no headers of aiohttp's own), no overall time limit."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=keepalive)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=UPSTREAM_READ_BUFFER,
    )


class UpstreamError(Exception):
    """The registry could not be asked, did not answer in time, or answered too much."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Registry:
    """Asks registries on the proxy's own behalf, on upstream connections kept for it."""

    def __init__(self, session: aiohttp.ClientSession, connections: int) -> None:
        self._session = session
        self._slots = asyncio.Semaphore(connections)

    @classmethod
    @contextlib.asynccontextmanager
    async def own(cls, connections: int, keepalive: float) -> AsyncIterator[Registry]:
        """A Registry on connections of its own (the CLI's), closed after the block."""
        async with upstream_session(connections, keepalive) as session:
            yield cls(session, connections)

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        timeouts: Timeouts,
        host: str | None = None,
        forwarded_for: str | None = None,
        accept: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """`method url` with the proxy's headers; the response, open while the block runs."""
        headers = {"X-Forwarded-Proto": "https"}
        if host is not None:
            headers["Host"] = host
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        if accept is not None:
            headers["Accept"] = accept
        timeout = aiohttp.ClientTimeout(sock_connect=timeouts.connect, sock_read=timeouts.read)
        try:
            async with asyncio.timeout(timeouts.connect):  # waiting for one is connecting
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamError(f"{method} {url}: no connection free", timed_out=True) from None
        try:
            async with self._session.request(
                method, url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                yield response
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(f"{method} {url}: timed out", timed_out=True) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamError(f"{method} {url}: {exc!r}") from exc
        finally:
            self._slots.release()

    @staticmethod
    async def body(response: aiohttp.ClientResponse, limit: int) -> bytes:
        """The whole body of `response`, or UpstreamError past `limit` bytes."""
        try:
            return await read_whole(response.content, limit)
        except TooLarge as exc:
            raise UpstreamError(f"{response.method} {response.url.path}: {exc}") from None
