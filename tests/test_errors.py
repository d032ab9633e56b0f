"""Canned error answers on a real socket: the same bytes aiohttp's own `Response` sends, for
keep-alive, HEAD, HTTP/1.0, `Connection: close` and pipelined requests."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from devtools.net import free_socket
from proxy.http.errors import Canned, error_response, unauthorized
from proxy.upstream.forward import closing

Answer = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


async def canned(request: web.BaseRequest) -> web.StreamResponse:
    return unauthorized("Registry Authentication")


async def reference(request: web.BaseRequest) -> web.StreamResponse:
    """The same answer through aiohttp's Response: headers, body and length as built."""
    built = unauthorized("Registry Authentication")
    headers = {k: v for k, v in built.headers.items() if k != "Content-Length"}
    body = built.body
    return web.Response(status=built.status, body=body, headers=headers)


async def serve(answer: Answer) -> AsyncIterator[int]:
    runner = web.ServerRunner(web.Server(answer))
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock).start()
    yield sock.getsockname()[1]
    await runner.cleanup()


@pytest.fixture
async def ports() -> AsyncIterator[tuple[int, int]]:
    """(the canned server's port, the reference server's)."""
    canned_server, reference_server = serve(canned), serve(reference)
    yield await anext(canned_server), await anext(reference_server)
    for server in (canned_server, reference_server):
        with pytest.raises(StopAsyncIteration):
            await anext(server)


def request(method: str = "GET", version: str = "1.1", *headers: str) -> bytes:
    lines = [f"{method} /v2/ HTTP/{version}", "Host: registry", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data` at once (pipelined requests) and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return DATE.sub(b"\r\nDate: -\r\n", received)


CLOSE = "Connection: close"
CASES = {
    "keep-alive, then close": request() + request("GET", "1.1", CLOSE),
    "HEAD": request("HEAD") + request("GET", "1.1", CLOSE),
    "Connection: close": request("GET", "1.1", CLOSE) + request(),
    "HTTP/1.0": request("GET", "1.0") + request(),
    "HTTP/1.0 keep-alive": request("GET", "1.0", "Connection: keep-alive") + request("HEAD", "1.0"),
    "pipelined": request() + request("HEAD") + request() + request("GET", "1.1", CLOSE),
}


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
async def test_the_bytes_are_aiohttps(ports: tuple[int, int], data: bytes) -> None:
    ours, theirs = [await exchange(port, data) for port in ports]
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.")


async def test_each_answer_is_whole(ports: tuple[int, int]) -> None:
    answers = await exchange(ports[0], request() + request("HEAD") + request("GET", "1.1", CLOSE))
    body = unauthorized("Registry Authentication").body
    heads = answers.split(b"HTTP/1.1 401 Unauthorized\r\n")[1:]
    assert [head.endswith(b"\r\n\r\n" + body) for head in heads] == [True, False, True]
    assert heads[1].endswith(b"\r\nDate: -\r\n\r\n")  # HEAD: the length, not the body
    assert all(f"Content-Length: {len(body)}\r\n".encode() in head for head in heads)
    assert heads[2].endswith(b"Connection: close\r\n\r\n" + body)


async def test_sent_while_keeping_the_connection_open(ports: tuple[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
    for _ in range(3):  # one request after the other on the same connection
        writer.write(request())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        assert b"Connection" not in head
        await reader.readexactly(length)
    writer.close()


async def test_a_forced_close_is_said_and_done() -> None:
    async def forced(request: web.BaseRequest) -> web.StreamResponse:
        return await closing(request, error_response(408, "UNKNOWN", "request body stalled"))

    server = serve(forced)
    port = await anext(server)
    answer = await exchange(port, request() + request())  # the second is never answered
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answer.count(b"HTTP/1.1") == 1 and b"Connection: close\r\n" in answer
    with pytest.raises(StopAsyncIteration):
        await anext(server)


def test_what_it_sends_cannot_change() -> None:
    answer = error_response(429, "TOOMANYREQUESTS", "slow down", {"Retry-After": "1"})
    assert isinstance(answer, Canned) and answer.status == 429
    assert answer.headers["Retry-After"] == "1"
    assert json.loads(answer.body)["errors"][0]["message"] == "slow down"
    assert answer.content_length == len(answer.body) == int(answer.headers["Content-Length"])
    with pytest.raises(TypeError):
        answer.headers["Retry-After"] = "2"


def test_a_header_cannot_be_injected() -> None:
    with pytest.raises(ValueError, match="control character"):
        error_response(400, "UNKNOWN", "x", {"Link": "a\r\nSet-Cookie: b"})
