"""No client can starve the others: requests in flight per user and per address, a bounded wait
for an upstream connection, idle bodies and trickled headers cut, connections that never
start TLS evicted, plain HTTP on the TLS port answered. In-process, against the fake upstream,
with raw sockets where a well-behaved client library would not misbehave."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    TlsPair,
    basic,
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
        "limits:\n  per_user: 32\n  upstream_connections: 60\n  upstream_wait: 30\n"
        "timeouts:\n  client_idle: 300\n"
    )
    stalling_upstream(upstream)
    uploads = [asyncio.ensure_future(stalled_upload(proxy, tls)) for _ in range(200)]
    # 32 of them reach the registry and hold a connection there; the others are told at once.
    # (200 TLS handshakes on both ends in this one process: on a busy machine, many seconds.)
    await until(lambda: sum(u.done() for u in uploads) == 200 - 32, seconds=60)
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
        "limits:\n  upstream_connections: 2\n  upstream_wait: 0.2\ntimeouts:\n  client_idle: 300\n"
    )
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
    for upload in held:
        upload.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_requests_in_flight_per_address_are_capped(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy("limits:\n  per_address: 3\ntimeouts:\n  client_idle: 300\n")
    started = stalling_upstream(upstream)
    held = []
    for user in ("push", "push", "push"):
        started.clear()
        held.append(asyncio.ensure_future(stalled_upload(proxy, tls, user)))
        await started.wait()
    async with proxy.session.get(proxy.url + MANIFEST, headers=proxy.auth("pull")) as resp:
        assert resp.status == 429  # the fourth request from this address, whoever sends it
        assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
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
