"""No client can starve the others: requests in flight per user and per address, a bounded wait
for an upstream connection, idle bodies and trickled headers cut, connections that never
start TLS evicted, plain HTTP on the TLS port answered. In-process, against the fake upstream,
with raw sockets where a well-behaved client library would not misbehave."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from devtools.net import free_port
from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    TlsPair,
    basic,
    samples,
    scrape,
    serving,
    until,
    write_setup,
)

UPLOAD = "/v2/push/app/blobs/uploads/0a1b2c"
MANIFEST = "/v2/library/app/manifests/v1"


def head(method: str, path: str, user: str, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: {basic(user, USERS[user])}\r\n{extra}\r\n"
    ).encode()


@asynccontextmanager
async def tls_stream(
    proxy: RunningProxy, tls: TlsPair
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    assert proxy.server.port is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
    )
    try:
        yield reader, writer
    finally:
        writer.close()


async def stalled_upload(proxy: RunningProxy, tls: TlsPair, user: str = "push") -> bytes:
    """Start a PATCH that declares 1000 bytes, send one, and wait for whatever comes back."""
    async with tls_stream(proxy, tls) as (reader, writer):
        path = proxy.upload(UPLOAD, user)
        writer.write(head("PATCH", path, user, "Content-Length: 1000\r\n") + b"x")
        await writer.drain()
        try:
            return await reader.read(4096)
        except (ConnectionError, ssl.SSLError):
            return b""


METRICS = "metrics:\n  listen: 127.0.0.1:{port}\n"


async def refused_by(proxy: RunningProxy) -> dict[str, float]:
    """`regproxy_fair_share_refused_total` by `limit`, as `/metrics` says now."""
    assert proxy.server.metrics_port is not None
    values = samples((await scrape(proxy.server.metrics_port))[1])
    return {
        dict(labels)["limit"]: value
        for (name, labels), value in values.items()
        if name == "regproxy_fair_share_refused_total"
    }


def stalling_upstream(upstream: FakeUpstream) -> asyncio.Event:
    """The upstream reads upload bodies as they come (holding its connection while a client
    stalls); the event is set each time one starts."""
    started = asyncio.Event()

    async def patch(request: web.Request) -> web.StreamResponse:
        started.set()
        await request.read()
        return web.Response(status=202)

    upstream.handlers[UPLOAD] = patch
    upstream.streaming.add(UPLOAD)
    return started


async def test_hundreds_of_stalled_uploads_by_one_user_do_not_stall_another_users_pull(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy(
        "limits:\n  per_user: 32\n  upstream_connections: 60\n  upstream_per_user: 32\n"
        "  upstream_wait: 30\n"
        "timeouts:\n  client_idle: 300\n"
    )
    stalling_upstream(upstream)
    uploads = [asyncio.ensure_future(stalled_upload(proxy, tls)) for _ in range(200)]
    # 32 of them reach the registry and hold a connection there; the others are told at once.
    # 200 TLS handshakes: the bound is generous for a loaded machine (it only ends a hang).
    await until(lambda: sum(u.done() for u in uploads) == 200 - 32, seconds=120)
    refused = [u.result() for u in uploads if u.done()]
    assert all(r.startswith(b"HTTP/1.1 429") and b"Retry-After: 1" in r for r in refused)
    # The refused are done: no more than the 32 others can reach the registry, which they
    # may not all have yet.
    await until(lambda: sum(r.method == "PATCH" for r in upstream.requests) == 32)
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200  # the other user's pull goes through
    for upload in uploads:
        upload.cancel()
    await asyncio.gather(*uploads, return_exceptions=True)


async def test_waiting_for_an_upstream_connection_is_bounded(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy(
        "limits:\n  upstream_connections: 4\n  upstream_per_user: 2\n  upstream_wait: 0.2\n"
        "timeouts:\n  client_idle: 300\n" + METRICS.format(port=free_port())
    )  # 4 connections: 2 kept for the proxy's own requests, 2 for clients'
    before = await refused_by(proxy)
    started = stalling_upstream(upstream)
    held = []
    for _ in range(2):
        started.clear()
        held.append(asyncio.ensure_future(stalled_upload(proxy, tls)))
        await started.wait()  # this one holds an upstream connection now
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
    after = await refused_by(proxy)
    assert {limit: after[limit] - before[limit] for limit in after} == {
        "per_address": 0, "per_user": 0, "anonymous": 0, "anonymous_per_address": 0,
        "upstream_wait": 1,
    }  # fmt: skip
    for upload in held:
        upload.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_requests_in_flight_per_address_are_capped(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy(
        "limits:\n  per_address: 3\ntimeouts:\n  client_idle: 300\n"
        + METRICS.format(port=free_port())
    )
    before = await refused_by(proxy)
    started = stalling_upstream(upstream)
    held = []
    for user in ("push", "push", "push"):
        started.clear()
        held.append(asyncio.ensure_future(stalled_upload(proxy, tls, user)))
        await started.wait()
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 429  # the fourth request from this address, whoever sends it
        assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert (await refused_by(proxy))["per_address"] - before["per_address"] == 1
    for upload in held:
        upload.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    await until(lambda: all(u.done() for u in held))
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200  # the slots are free again


async def test_a_body_that_stops_arriving_is_cut_and_frees_its_upstream_connection(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy(
        "limits:\n  upstream_connections: 1\n  upstream_wait: 30\ntimeouts:\n  client_idle: 0.3\n"
    )
    stalling_upstream(upstream)
    answer = await stalled_upload(proxy, tls)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")  # cut, never a success
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200  # the only upstream connection is free again


async def test_trickled_headers_are_cut_while_others_are_served(
    make_proxy: ProxyFactory, tls: TlsPair
) -> None:
    proxy = await make_proxy("timeouts:\n  header: 0.5\n")
    async with tls_stream(proxy, tls) as (reader, writer):
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n")
        cut = asyncio.ensure_future(reader.read())
        lines = 0
        while not cut.done():
            async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
                assert resp.status == 200  # everyone else is served meanwhile
            writer.write(f"X-Slow-{lines}: 1\r\n".encode())  # one header line at a time
            lines += 1
            await asyncio.sleep(0.1)
        assert (await cut).startswith(b"HTTP/1.1 408 Request Timeout")
        assert lines < 100  # cut by the header timeout, not by the keep-alive one


async def test_an_idle_keep_alive_connection_outlives_the_header_timeout(
    make_proxy: ProxyFactory, tls: TlsPair
) -> None:
    proxy = await make_proxy("timeouts:\n  header: 0.3\n  keepalive: 60\n")
    async with tls_stream(proxy, tls) as (reader, writer):
        for _ in range(2):
            writer.write(head("GET", "/v2/", "pull"))
            status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 200")
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # {}
            await asyncio.sleep(0.6)  # idle between requests: the keep-alive timeout applies


PIPELINED = {
    "a complete request": head("GET", "/v2/", "pull"),
    "a request with a body": head("PUT", MANIFEST, "push", "Content-Length: 6\r\n") + b"\r\n\r\nab",
    "a chunked request": head("PUT", MANIFEST, "push", "Transfer-Encoding: chunked\r\n")
    + b"2\r\nab\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("first", list(PIPELINED))
async def test_a_request_pipelined_behind_another_gets_the_header_timeout(
    make_proxy: ProxyFactory, tls: TlsPair, first: str
) -> None:
    """#23 finding 12: one write holding a complete request and the start of another, and
    then nothing: the second is cut `timeouts.header` after the first is answered (it was
    left open until the keep-alive timeout, 60 s here)."""
    proxy = await make_proxy("timeouts:\n  header: 0.5\n  keepalive: 60\n")
    async with tls_stream(proxy, tls) as (reader, writer):
        writer.write(PIPELINED[first] + b"GET /v2/ HTTP/1.1\r\nHost: local")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        length = await _content_length(reader)
        await reader.readexactly(length)
        rest = await asyncio.wait_for(reader.read(), 20)  # the keep-alive would take 60 s
        assert rest.startswith(b"HTTP/1.1 408 Request Timeout"), rest


async def _content_length(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])


async def test_the_start_of_a_request_sent_while_another_is_answered_gets_the_header_timeout(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy("timeouts:\n  header: 0.5\n  keepalive: 60\n")
    answering, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        answering.set()
        await release.wait()
        return web.json_response({})

    upstream.handlers[MANIFEST] = slow
    async with tls_stream(proxy, tls) as (reader, writer):
        writer.write(head("GET", MANIFEST, "pull"))
        await answering.wait()
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: local")  # while the first is answered
        await writer.drain()
        release.set()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await reader.readexactly(await _content_length(reader))
        rest = await asyncio.wait_for(reader.read(), 20)
        assert rest.startswith(b"HTTP/1.1 408 Request Timeout"), rest


@pytest.mark.parametrize("first", list(PIPELINED))
async def test_after_any_request_an_idle_connection_outlives_the_header_timeout(
    make_proxy: ProxyFactory, tls: TlsPair, first: str
) -> None:
    """Nothing pending after a request with or without a body: the keep-alive applies."""
    proxy = await make_proxy("timeouts:\n  header: 0.3\n  keepalive: 60\n")
    async with tls_stream(proxy, tls) as (reader, writer):
        for request in (PIPELINED[first], head("GET", "/v2/", "pull")):
            writer.write(request)
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            await reader.readexactly(await _content_length(reader))
            await asyncio.sleep(0.6)  # idle between requests: the keep-alive timeout applies


async def test_connections_that_never_start_tls_are_evicted_for_a_real_client(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy("limits:\n  connections: 20\ntimeouts:\n  handshake: 60\n")
    assert proxy.server.port is not None
    idle = [await asyncio.open_connection("127.0.0.1", proxy.server.port) for _ in range(40)]
    async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
    # 40 idle + 1 real client, room for 20: the 21 oldest idle ones were closed, in order.
    for reader, _ in idle[:21]:
        assert await reader.read() == b""
    for _, writer in idle:
        writer.close()


STALLED_HELLO = b"\x16\x03\x01\x02\x00"  # a ClientHello record of 512 bytes: its header only


async def stalled_handshakes(
    proxy: RunningProxy, address: str, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` connections from `address` that start a TLS handshake and never finish it,
    each taken into its handshake by the proxy (it has read what they sent) before the next
    is opened."""
    assert proxy.server.port is not None
    opened = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.server.port, local_addr=(address, 0)
        )
        writer.write(STALLED_HELLO)
        await writer.drain()
        opened.append((reader, writer))
        read = functools.partial(
            _read_by_server, proxy.server.port, writer.get_extra_info("sockname")[1]
        )
        await until(read, what="the proxy never read the ClientHello's first bytes")
    return opened


def _read_by_server(server_port: int, client_port: int) -> bool:
    """Whether the server's end of the connection from `client_port` has nothing left
    unread (or is gone): the proxy took the bytes into its TLS handshake."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if (local, remote) == (server_port, client_port):
            return int(fields[4].split(":")[1], 16) == 0
    return True


async def closed(reader: asyncio.StreamReader) -> bool:
    return await reader.read() == b""


async def test_stalled_tls_handshakes_are_evicted_for_a_real_client(
    make_proxy: ProxyFactory,
) -> None:
    """#23 finding 9: addresses holding every connection with handshakes that never finish
    got a real client's TLS connection refused. Now the oldest stalled handshake makes room."""
    proxy = await make_proxy("limits:\n  connections: 8\ntimeouts:\n  handshake: 60\n")
    held = [
        *await stalled_handshakes(proxy, "127.0.0.2", 4),  # each address may hold half
        *await stalled_handshakes(proxy, "127.0.0.3", 4),
    ]
    async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
    assert await asyncio.wait_for(closed(held[0][0]), 10)  # the oldest made room
    for _, writer in held:
        writer.close()


async def test_one_address_holds_at_most_half_of_the_connections(
    make_proxy: ProxyFactory,
) -> None:
    """#23 finding 9: no per-address cap, handshakes included. With room for 8, one address
    holds 4 at most: each one more closes its own oldest stalled handshake."""
    proxy = await make_proxy("limits:\n  connections: 8\ntimeouts:\n  handshake: 60\n")
    held = await stalled_handshakes(proxy, "127.0.0.2", 6)
    gone = [asyncio.wait_for(closed(reader), 10) for reader, _ in held[:2]]
    assert all(await asyncio.gather(*gone))
    async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
    for _, writer in held:
        writer.close()


async def test_plain_http_on_the_tls_port_gets_a_plain_answer(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="regproxy.listener")
    proxy = await make_proxy()
    assert proxy.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = await reader.read()
    writer.close()
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 Bad Request")
    assert body == b"The plain HTTP request was sent to HTTPS port\n"
    assert "plain HTTP request on the TLS port from 127.0.0.1" in caplog.text


async def test_a_tls_handshake_never_finished_is_closed(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy("timeouts:\n  handshake: 0.3\n")
    assert proxy.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
    assert await reader.read() == b""  # closed by the proxy (the test would hang otherwise)
    writer.close()


async def test_aiohttp_client_sees_429_as_a_registry_error(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """What docker and podman print comes from the JSON error body."""
    proxy = await make_proxy("limits:\n  per_user: 1\ntimeouts:\n  client_idle: 300\n")
    started = stalling_upstream(upstream)
    held = asyncio.ensure_future(stalled_upload(proxy, tls))
    await started.wait()
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as session,
        session.get(proxy.url + MANIFEST, headers=proxy.auth("push")) as resp,
    ):
        assert resp.status == 429
        body = await resp.json()
        assert body["errors"][0]["message"] == "too many requests in flight for push"
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)


async def test_the_soft_file_limit_is_raised_and_lifecycle_is_told_once(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """Started as systemd starts a service (soft limit 1,024 below a higher hard one), with
    two workers: the soft limit is raised to the hard one and logged, and "listening",
    "shutting down" and "stopped" are each said once, by the parent, not once per worker."""
    config = write_setup(tmp_path, tls, upstream.url, "workers: 2\n")
    async with serving(["serve", "-c", str(config)], tmp_path, open_files=(1024, 4096)) as p:
        assert "open files limit: 4096" in (tmp_path / "regproxy.err").read_text()
        p.terminate()
        assert await asyncio.wait_for(p.wait(), 30) == 0
    lines = (tmp_path / "regproxy.err").read_text().splitlines()
    for said in ("regproxy listening on", "shutting down", ": stopped"):
        assert sum(said in line for line in lines) == 1, (said, lines)


async def test_idle_connections_cannot_lock_out_a_real_client_under_a_low_file_limit(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """Under a 128 open-files limit (systemd's default is 1,024), 150 connections that never
    start TLS: the proxy keeps its connections below what the limit allows, evicting idle
    ones, so a real client is still served."""
    config = write_setup(tmp_path, tls, upstream.url, "timeouts:\n  handshake: 60\n")
    port = int(config.read_text().split("listen: 127.0.0.1:")[1].split()[0])
    async with serving(["serve", "-c", str(config)], tmp_path, open_files=128):
        assert "open files limit: 128" in (tmp_path / "regproxy.err").read_text()
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(150)]
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context())
        ) as session:
            headers = {"Authorization": basic("pull", USERS["pull"])}
            async with session.get(f"https://localhost:{port}/v2/", headers=headers) as resp:
                assert resp.status == 200
        for _, writer in idle:
            writer.close()


# -- #23: shares of the upstream pool and of the manifest budget ---------------------------------

BLOB = "/v2/library/app/blobs/sha256:" + "b" * 64
PUBLIC_BLOB = "/v2/public/app/blobs/sha256:" + "c" * 64
SLOW = "limits:\n  upstream_connections: 6\n  upstream_wait: 1\ntimeouts:\n  client_idle: 300\n"


def hanging_blobs(upstream: FakeUpstream, *paths: str) -> tuple[list[str], asyncio.Event]:
    """Blob GETs whose answer starts and then stops coming (the path of each one that reached
    the registry is recorded): each holds its upstream connection until `release` is set."""
    reached: list[str] = []
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        response = web.StreamResponse(headers={"Content-Length": str(1 << 20)})
        await response.prepare(request)
        await response.write(b"x" * 1024)
        await release.wait()
        return response

    for path in paths:
        upstream.handlers[path] = hang
    return reached, release


@dataclass
class SlowGets:
    """GETs whose answers are never read past their heads, each kept open until `release`."""

    proxy: RunningProxy
    tls: TlsPair
    release: asyncio.Event
    heads: list[bytes] = field(default_factory=list)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)

    def start(self, path: str, user: str | None = None, source: str = "127.0.0.1") -> None:
        self.tasks.append(asyncio.ensure_future(self._get(path, user, source)))

    def told(self, status: bytes) -> int:
        return sum(head.split()[1] == status for head in self.heads)

    async def _get(self, path: str, user: str | None, source: str) -> None:
        assert self.proxy.server.port is not None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.proxy.server.port, ssl=self.tls.client_context(),
            server_hostname="localhost", local_addr=(source, 0),
        )  # fmt: skip
        try:
            auth = f"Authorization: {basic(user, USERS[user])}\r\n" if user else ""
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n".encode())
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            await self.release.wait()
        finally:
            writer.close()

    async def stop(self) -> None:
        self.release.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_users_within_their_caps_cannot_fill_the_upstream_pool(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """#23 finding 7: two users, each within their own cap, start more slow downloads than
    their share of the pool; a third user's pull still gets an upstream connection (the
    first two are told to retry what is over their share)."""
    proxy = await make_proxy(SLOW)  # 6 connections: 2 for the proxy's own, 4 for clients
    reached, release = hanging_blobs(upstream, BLOB)
    slow = SlowGets(proxy, tls, release)
    for user in ("push", "other", "push", "other", "push", "other"):
        slow.start(BLOB, user)
    # Each of the six holds a connection upstream, or was told to retry.
    await until(lambda: len(reached) + slow.told(b"503") == 6)
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
    await slow.stop()


async def test_the_proxys_own_requests_have_connections_of_their_own(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """#23: clients' slow downloads take every connection they may have; the catalog (which
    the proxy pages through on its own connections) is still answered."""
    proxy = await make_proxy(SLOW)
    reached, release = hanging_blobs(upstream, BLOB)
    slow = SlowGets(proxy, tls, release)
    for user in ("push", "other", "pull", "push", "other", "pull"):
        slow.start(BLOB, user)
    await until(lambda: len(reached) + slow.told(b"503") == 6)
    upstream.handlers["/v2/_catalog"] = lambda request: _catalog_page()
    async with asyncio.timeout(30):  # only ends a hang: the catalog must come at once
        async with proxy.session.get(proxy.url + "/v2/_catalog", headers=proxy.auth("pull")) as r:
            assert r.status == 200
    await slow.stop()


async def _catalog_page() -> web.StreamResponse:
    return web.json_response({"repositories": ["library/app"]})


PUBLIC = "acl:\n  - anonymous: true\n    repositories: [public/**]\n    actions: [pull]\n"


async def test_anonymous_callers_cannot_fill_the_upstream_pool(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """#23 finding 8: with a public repository, anonymous slow downloads from two addresses
    take no more than their addresses' shares; a user's pull still goes through."""
    proxy = await make_proxy(SLOW + PUBLIC + "  - actions: [pull]\n")
    reached, release = hanging_blobs(upstream, PUBLIC_BLOB)
    slow = SlowGets(proxy, tls, release)
    for source in ("127.0.0.2", "127.0.0.3") * 3:
        slow.start(PUBLIC_BLOB, source=source)
    await until(lambda: len(reached) + slow.told(b"503") == 6)
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
    await slow.stop()


async def test_anonymous_requests_are_capped_together_and_per_address(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    limits = "limits:\n  anonymous: 3\n  anonymous_per_address: 2\n"
    proxy = await make_proxy(limits + PUBLIC + "  - actions: [pull]\n")
    reached, release = hanging_blobs(upstream, PUBLIC_BLOB)
    slow = SlowGets(proxy, tls, release)
    for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3"):
        slow.start(PUBLIC_BLOB, source=source)
    await until(lambda: len(reached) == 3)
    slow.start(PUBLIC_BLOB, source="127.0.0.2")  # its address has 2 in flight
    slow.start(PUBLIC_BLOB, source="127.0.0.4")  # anonymous callers have 3 in flight
    await until(lambda: slow.told(b"429") == 2)
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200  # a user is no anonymous caller
    await slow.stop()


async def test_one_users_stalled_manifests_do_not_take_the_budget_of_others(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """#23 finding 6: one user's manifest PUTs for immutable tags, each 4 MiB but the last
    byte, then silent: once that user's share is held, its next one is told to retry, and
    another user's release push goes through."""
    guards = "immutable_tags:\n  - repositories: ['apps/**']\n    tags: ['v*']\n"
    acl = "acl:\n  - users: [push, other]\n    actions: '*'\n"
    proxy = await make_proxy(guards + acl + "timeouts:\n  client_idle: 300\n")
    size = 4 * 1024 * 1024
    answers: list[bytes] = []

    async def stalled_manifest(n: int) -> None:
        async with tls_stream(proxy, tls) as (reader, writer):
            extra = f"Content-Type: application/json\r\nContent-Length: {size}\r\n"
            writer.write(head("PUT", f"/v2/apps/web/manifests/v{n}", "push", extra))
            writer.write(b" " * (size - 1))
            await writer.drain()
            answers.append(await reader.read(4096))

    stalled = [asyncio.ensure_future(stalled_manifest(n)) for n in range(17)]
    await until(lambda: any(a.startswith(b"HTTP/1.1 503") for a in answers), seconds=120)
    assert b"too many manifests in flight" in next(a for a in answers if a)

    async def new_tag(request: web.Request) -> web.StreamResponse:
        return web.Response(status=201 if request.method == "PUT" else 404)

    upstream.handlers["/v2/apps/web/manifests/v99"] = new_tag
    release = json.dumps({"schemaVersion": 2, "layers": [{"size": n} for n in range(40)]})
    async with proxy.session.put(
        proxy.url + "/v2/apps/web/manifests/v99", data=release.encode(),  # about 500 bytes
        headers={**proxy.auth("other"), "Content-Type": "application/json"},
    ) as resp:  # fmt: skip
        assert resp.status == 201
    for task in stalled:
        task.cancel()
    await asyncio.gather(*stalled, return_exceptions=True)


async def test_a_client_reading_slower_than_the_minimum_rate_is_cut(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair, caplog: pytest.LogCaptureFixture
) -> None:
    """#23 finding 7: a download read slower than `limits.min_rate`, window after window, is
    cut (its upstream connection freed), whatever the idle timeout allows per piece."""
    size = 16 * 1024 * 1024
    blob = bytes(size)

    async def fast(request: web.Request) -> web.StreamResponse:
        return web.Response(body=blob)

    upstream.handlers[BLOB] = fast
    proxy = await make_proxy("limits:\n  min_rate: 262144\ntimeouts:\n  client_idle: 2\n")
    assert proxy.server.port is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
    )
    writer.write(head("GET", BLOB, "pull"))
    received = 0

    def cut() -> bool:
        return any("reads under 262144 B/s" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, "regproxy.forward"):
        while not cut():  # about 64 KiB a second: a quarter of the minimum
            piece = await reader.read(16 * 1024)
            assert piece, "the whole answer came before the proxy cut it"
            received += len(piece)
            await asyncio.sleep(0.25)
    writer.close()
    assert received < size
