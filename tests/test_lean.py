"""Refusals answered as parsed (`proxy.serve.lean`), on a real TLS socket: the same bytes, access
lines, metrics and audit entries as aiohttp's own loop gives (a proxy whose connections are
plain `Connections`), requests it must not take sent there, pipelined answers never overtaken,
and the aiohttp internals it relies on pinned."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from devtools.net import free_port
from proxy.http.listener import Connection, Connections
from proxy.observe.logsetup import SINK
from proxy.serve.lean import SUPPORTED, LeanConnection, LeanConnections
from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    TlsPair,
    basic,
    samples,
    scrape,
)

DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")
CLOSE = "Connection: close"
PULL = "Authorization: " + basic("pull", USERS["pull"])


def request(line: str = "GET /v2/", *headers: str, body: bytes = b"") -> bytes:
    version = "" if line.endswith(("HTTP/1.0", "HTTP/1.1")) else " HTTP/1.1"
    return "\r\n".join([line + version, "Host: localhost", *headers, "", ""]).encode() + body


async def connect(
    proxy: RunningProxy, tls: TlsPair
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert proxy.server.port is not None
    return await asyncio.open_connection(
        "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
    )


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One answer with a Content-Length body, read whole (its Date blanked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    return DATE.sub(b"\r\nDate: -\r\n", head + await reader.readexactly(length))


async def warm(
    proxy: RunningProxy, tls: TlsPair
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose first request was answered: aiohttp's loop waits for the next (the
    first may arrive with the end of the handshake, before the loop runs)."""
    reader, writer = await connect(proxy, tls)
    writer.write(request())
    assert b" 401 " in await answer(reader)
    return reader, writer


async def exchange(proxy: RunningProxy, tls: TlsPair, data: bytes) -> bytes:
    """Send `data` at once (pipelined requests) on a warm connection; read until it closes."""
    reader, writer = await warm(proxy, tls)
    writer.write(data)
    try:
        received = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return DATE.sub(b"\r\nDate: -\r\n", received)


Pair = tuple[RunningProxy, RunningProxy]


async def both(make_proxy: ProxyFactory, tmp_path: Path, extra_yaml: str = "") -> Pair:
    """The same configuration served with refusals answered as parsed, and without."""
    lean = await make_proxy(extra_yaml, directory=tmp_path / "lean")
    plain = await make_proxy(extra_yaml, directory=tmp_path / "plain", connections=Connections)
    assert lean.server.factory is LeanConnections and SUPPORTED
    return lean, plain


@pytest.fixture
async def pair(make_proxy: ProxyFactory, tmp_path: Path) -> Pair:
    return await both(make_proxy, tmp_path)


BODY = b'{"a": 1}'
CASES = {
    "keep-alive": request() + request() + request("GET /v2/", CLOSE),
    "HEAD": request("HEAD /v2/") + request("GET /v2/", CLOSE),
    "pipelined": request()
    + request("HEAD /v2/")
    + request("GET /v2/x/tags/list")
    + request("DELETE /v2/x/manifests/sha256:" + "a" * 64, CLOSE),
    "classify refusals": request("GET /v2foo")
    + request("OPTIONS /v2/")
    + request("GET /v2/Bad/manifests/x")
    + request("GET /v2/", CLOSE),
    "Connection: close": request("GET /v2/", CLOSE) + request(),
    "HTTP/1.0": request("GET /v2/ HTTP/1.0") + request(),
    "HTTP/1.0 keep-alive": request("GET /v2/ HTTP/1.0", "Connection: keep-alive")
    + request("GET /v2/", CLOSE),
    "a body": request("PUT /v2/x/manifests/v1", f"Content-Length: {len(BODY)}", body=BODY)
    + request("GET /v2/", CLOSE),
    "a chunked body": request(
        "PATCH /v2/x/blobs/uploads/a", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"
    )
    + request("GET /v2/", CLOSE),
    "an empty body": request("PUT /v2/x/manifests/v1", "Content-Length: 0")
    + request("GET /v2/", CLOSE),
    "Expect": request("PUT /v2/x/manifests/v1", "Expect: 100-continue", "Content-Length: 0")
    + request("GET /v2/", CLOSE),
    "upgrade": request("GET /v2/", "Connection: Upgrade", "Upgrade: websocket")
    + request("GET /v2/", CLOSE),
    "credentials": request("GET /v2/", PULL) + request() + request("GET /v2/", PULL, CLOSE),
    "malformed credentials": request("GET /v2/", "Authorization: Basic !!!")
    + request("GET /v2/", CLOSE),
    "malformed request": request() + b"GET /v2/ HTTP/1.1\r\nBad header\r\n\r\n",
    "headers the registry reads otherwise": request("GET /v2/", "Host: a", "Host: b")
    + request("GET /v2/", CLOSE),
}


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
async def test_the_bytes_are_the_loops(pair: Pair, tls: TlsPair, data: bytes) -> None:
    lean, plain = [await exchange(proxy, tls, data) for proxy in pair]
    assert lean == plain
    assert lean.startswith(b"HTTP/1.")


async def test_refusals_do_not_wake_aiohttps_loop(pair: Pair, tls: TlsPair) -> None:
    lean = pair[0]
    reader, writer = await warm(lean, tls)
    assert lean.server.connections is not None
    (connection,) = lean.server.connections.connections
    assert isinstance(connection, LeanConnection)
    waiting = connection._waiter
    assert waiting is not None and not waiting.done()
    for data in (request(), request() + request("GET /v2/x/tags/list") + request("GET /v2foo")):
        writer.write(data)
        for _ in range(data.count(b"HTTP/1.1\r\n")):
            assert b"HTTP/1.1 4" in await answer(reader)
    assert connection._waiter is waiting and not waiting.done()  # its loop never ran
    writer.write(request("GET /v2/", PULL))
    assert b" 200 " in await answer(reader)
    assert connection._waiter is not waiting  # an allowed request: the loop's
    writer.close()


async def test_a_request_queued_for_the_loop_is_answered_first(pair: Pair, tls: TlsPair) -> None:
    """Two reads in one turn of the event loop: the first woke aiohttp's loop, which has not
    run yet when the second, a refusal, arrives."""
    lean = pair[0]
    reader, writer = await warm(lean, tls)
    assert lean.server.connections is not None
    (connection,) = lean.server.connections.connections
    connection.data_received(request("GET /v2/", PULL))
    connection.data_received(request())
    assert [re.findall(rb"HTTP/1.1 (\d+) ", await answer(reader)) for _ in range(2)] == [
        [b"200"],
        [b"401"],
    ]
    writer.close()


async def test_an_earlier_answer_is_never_overtaken(
    pair: Pair, tls: TlsPair, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"tags": []})

    path = "/v2/library/app/tags/list"
    upstream.handlers[path] = slow
    refusals = request() + request("GET /v2/", CLOSE)
    for proxy in pair:
        for together in (True, False):  # in the same write, or once the first is upstream
            release.clear()
            reader, writer = await warm(proxy, tls)
            writer.write(request(f"GET {path}", PULL) + (refusals if together else b""))
            while len(upstream.requests) % 2 == 0:
                await asyncio.sleep(0.01)  # until the first is upstream
            writer.write(b"" if together else refusals)
            await writer.drain()
            release.set()
            answers = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert re.findall(rb"HTTP/1.1 (\d+) ", answers) == [b"200", b"401", b"401"]


async def test_a_full_gate_is_answered_as_the_loop_does(
    make_proxy: ProxyFactory, tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    for_gates = "limits:\n  per_address: 1\ntimeouts:\n  client_idle: 300\n"
    metrics = f"metrics:\n  listen: 127.0.0.1:{free_port()}\n"
    lean, plain = await both(make_proxy, tmp_path, for_gates + metrics)
    assert lean.server.metrics_port is not None
    key = ("regproxy_fair_share_refused_total", (("limit", "per_address"),))
    # The process's metrics: earlier tests in it may have counted some.
    before = samples((await scrape(lean.server.metrics_port))[1]).get(key, 0)
    upload, release = "/v2/push/app/blobs/uploads/0a1b2c", asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=204)

    upstream.streaming.add(upload)
    upstream.handlers[upload] = held
    answers = []
    for proxy in (lean, plain):
        release.clear()
        _, holding = await connect(proxy, tls)  # an upload holds the address's share
        auth = "Authorization: " + basic("push", USERS["push"])
        path = proxy.upload(upload, "push")
        holding.write(request(f"PATCH {path}", auth, "Content-Length: 1000", body=b"x"))
        while not upstream.requests or upstream.requests[-1].method != "PATCH":
            await asyncio.sleep(0.01)  # until it is in flight
        reader, writer = await connect(proxy, tls)
        for _ in range(2):  # the second after the loop waits
            writer.write(request())
            answers.append(await answer(reader))
        writer.close()
        release.set()
        holding.close()
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert b"HTTP/1.1 429 Too Many Requests\r\n" in answers[0]
    assert samples((await scrape(lean.server.metrics_port))[1])[key] - before == 4


@pytest.fixture
def access_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "access.log"
    SINK.open(path)
    yield path
    SINK.close()


async def test_access_lines_metrics_and_audit_are_the_loops(
    make_proxy: ProxyFactory,
    tmp_path: Path,
    tls: TlsPair,
    access_log: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = f"metrics:\n  listen: 127.0.0.1:{free_port()}\n"
    lean, plain = await both(make_proxy, tmp_path, metrics)
    assert lean.server.metrics_port is not None
    data = CASES["pipelined"] + CASES["classify refusals"] + CASES["credentials"]
    seen: list[tuple[list[str], dict[object, float], list[str]]] = []
    caplog.set_level(logging.INFO, logger="regproxy.audit")
    for proxy in (lean, plain):
        access_log.write_text("")
        caplog.clear()
        before = samples((await scrape(lean.server.metrics_port))[1])
        for requests in data.split(b"Connection: close\r\n\r\n")[:-1]:
            await exchange(proxy, tls, requests + b"Connection: close\r\n\r\n")
        after = samples((await scrape(lean.server.metrics_port))[1])
        counted = {
            key: after[key] - before.get(key, 0)
            for key in after
            if key[0] == "regproxy_requests_total" and after[key] != before.get(key)
        }
        lines = [re.sub(r"\[[^]]*\]", "[-]", line) for line in access_log.read_text().splitlines()]
        audited = [re.sub(r'"time": "[^"]*"', "", r.getMessage()) for r in caplog.records
                   if r.name == "regproxy.audit"]  # fmt: skip
        seen.append((lines, counted, audited))
    assert seen[0] == seen[1]
    lines, counted, audited = seen[0]
    warm_ups = data.count(CLOSE.encode())
    assert len(lines) == data.count(b"HTTP/1.1\r\n") + warm_ups
    assert sum(counted.values()) == len(lines)
    assert len(audited) == 1 and '"status": 401' in audited[0]  # the anonymous DELETE


async def test_the_keepalive_timeout_runs_from_the_last_answer(
    make_proxy: ProxyFactory, tmp_path: Path, tls: TlsPair
) -> None:
    lean, plain = await both(make_proxy, tmp_path, "timeouts:\n  keepalive: 1\n")
    loop = asyncio.get_running_loop()
    for proxy in (lean, plain):
        reader, writer = await warm(proxy, tls)
        for _ in range(3):
            writer.write(request())
            await answer(reader)
            answered = loop.time()
            await asyncio.sleep(0.6)  # within the timeout: the next request is answered
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert loop.time() - answered >= 0.9, "closed before the keep-alive timeout"
        writer.close()


async def test_an_unfinished_request_after_a_refusal_gets_the_header_timeout(
    make_proxy: ProxyFactory, tmp_path: Path, tls: TlsPair
) -> None:
    lean, plain = await both(make_proxy, tmp_path, "timeouts:\n  header: 0.5\n")
    unfinished = request() + b"GET /v2/ HTTP/1.1\r\nHost: loc"
    answers = [await exchange(proxy, tls, unfinished) for proxy in (lean, plain)]
    assert answers[0] == answers[1]
    assert re.findall(rb"HTTP/1.1 (\d+) ", answers[0]) == [b"401", b"408"]


async def test_a_draining_server_closes_after_the_answer(pair: Pair, tls: TlsPair) -> None:
    answers = []
    for proxy in pair:
        reader, writer = await warm(proxy, tls)
        proxy.server.draining = True
        writer.write(request() + request())
        answers.append(DATE.sub(b"\r\nDate: -\r\n", await asyncio.wait_for(reader.read(), 10)))
        writer.close()
    assert answers[0] == answers[1]
    assert answers[0].count(b"HTTP/1.1 401") == 1 and CLOSE.encode() in answers[0]


async def test_anonymous_pulls_a_rule_allows_are_forwarded_once(
    make_proxy: ProxyFactory, tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    public = "acl:\n  - anonymous: true\n    repositories: [public/**]\n    actions: [pull]\n"
    lean, plain = await both(make_proxy, tmp_path, public)
    data = request("GET /v2/public/app/tags/list") + request("GET /v2/", CLOSE)
    answers = [await exchange(proxy, tls, data) for proxy in (lean, plain)]
    assert answers[0] == answers[1]
    assert re.findall(rb"HTTP/1.1 (\d+) ", answers[0]) == [b"200", b"401"]
    assert [r.path_qs for r in upstream.requests] == ["/v2/public/app/tags/list"] * 2


# What proxy/serve/lean.py was written against: aiohttp 3.14's request loop, how it queues
# and wakes for parsed requests, re-arms the keep-alive timer and logs an answer. A new
# aiohttp that changes one fails here: re-read them against lean.py, then update the pins.
PINNED = {
    "start": "2e565fd40c8e04fb",
    "data_received": "1ee57ebe052e6c80",
    "_process_keepalive": "b472e0fb8445ce42",
    "finish_response": "b7eb53db8f4b30ca",
    "log_access": "8fe11475a9a5af24",
    "close": "84518f965e198ee3",
    "force_close": "38d0e1e798e4d3b7",
    "connection_made": "44d50b5763b2c7e4",
    "_resume_reading_if_drained": "27f2a6fbbb3a790e",
}


def test_the_aiohttp_internals_it_relies_on_are_unchanged() -> None:
    changed = [
        name
        for name, pin in PINNED.items()
        if hashlib.sha256(inspect.getsource(getattr(RequestHandler, name)).encode())
        .hexdigest()[:16] != pin
    ]  # fmt: skip
    assert changed == [], f"aiohttp's RequestHandler changed: re-read lean.py against {changed}"
    assert issubclass(LeanConnection, Connection) and SUPPORTED
