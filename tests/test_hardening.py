"""Bad input, abuse and faults: a clear answer, never a bypass, a traceback, a hang or a leak."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.conftest import USERS, FakeUpstream, ProxyFactory, RunningProxy, TlsPair, basic

PUSH = basic("push", USERS["push"])
PULL = basic("pull", USERS["pull"])


async def raw_exchange(
    proxy: RunningProxy, tls: TlsPair, data: bytes, timeout: float = 5.0, answers: int = 1
) -> bytes:
    """Send raw bytes over TLS and read `answers` answers: each head and its Content-Length of
    body (or up to the server's close when it gives none). `timeout` only stops a broken run."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
    )
    writer.write(data)
    await writer.drain()
    answer = b""
    try:
        async with asyncio.timeout(timeout):
            for _ in range(answers):
                head = await reader.readuntil(b"\r\n\r\n")
                answer += head
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                answer += await (reader.readexactly(int(length[1])) if length else reader.read())
    except asyncio.IncompleteReadError as exc:
        answer += exc.partial
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    return answer


def statuses(response: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", response)]


def request(line: str, *headers: str, body: bytes = b"") -> bytes:
    head = "\r\n".join([line, "Host: localhost", *headers, "", ""])
    return head.encode() + body


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    # caplog.records here would be the teardown's records only: look at the test's own, at
    # the levels an operator sees (aiohttp keeps a debug traceback for a first bad method).
    logged = caplog.get_records("setup") + caplog.get_records("call")
    assert not [r for r in logged if r.exc_info and r.levelno >= logging.INFO], "a traceback"


BAD_REQUESTS = {
    "request line too long": request("GET /v2/" + "a" * 9000 + " HTTP/1.1"),
    "header too large": request("GET /v2/ HTTP/1.1", "X-Big: " + "b" * 9000),
    "too many headers": request("GET /v2/ HTTP/1.1", *[f"X-H{i}: 1" for i in range(200)]),
    "content-length and transfer-encoding": request(
        "PATCH /v2/a/blobs/uploads/u1 HTTP/1.1",
        f"Authorization: {PUSH}",
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
        body=b"0\r\n\r\n",
    ),
    "two different content-lengths": request(
        "PATCH /v2/a/blobs/uploads/u1 HTTP/1.1",
        f"Authorization: {PUSH}",
        "Content-Length: 5",
        "Content-Length: 6",
        body=b"hello!",
    ),
    "transfer-encoding not chunked": request(
        "PATCH /v2/a/blobs/uploads/u1 HTTP/1.1",
        f"Authorization: {PUSH}",
        "Transfer-Encoding: gzip",
        body=b"xxxx",
    ),
    "obsolete line folding": request(
        "GET /v2/ HTTP/1.1", f"Authorization: {PUSH}", "X-Folded: a", " b"
    ),
    "space before colon": request("GET /v2/ HTTP/1.1", f"Authorization : {PUSH}"),
    "lower-case method": request("get /v2/a/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "unknown method": request("BREW /v2/ HTTP/1.1", f"Authorization: {PUSH}"),
    "dot segments": request("GET /v2/a/../b/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "encoded slash": request("GET /v2/a%2Fb/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "encoded dots": request("GET /v2/%2e%2e/b/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "double slash": request("GET /v2//a/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "leading double slash": request("GET //v2/a/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "semicolon parameter": request("GET /v2/a;x=1/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"),
    "cyrillic look-alike": request(
        "GET /v2/APP/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"
    ).replace(b"APP", "\u0430pp".encode()),
    "fullwidth letters": b"GET /v2/\xef\xbd\x81pp/manifests/1 HTTP/1.1\r\nHost: x\r\n"
    + f"Authorization: {PUSH}\r\n\r\n".encode(),
    "absolute-form to another host": request(
        "GET http://evil.example/v2/a/manifests/1 HTTP/1.1", f"Authorization: {PUSH}"
    ),
    "non-utf8 authorization": b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"
    + b"Authorization: Basic \xff\xfe\r\n\r\n",
    "non-utf8 credentials": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
    + base64.b64encode(b"pu\xffsh:pw")
    + b"\r\n\r\n",
    "nul in header": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "garbage": os.urandom(64).replace(b"\r\n", b"xx") + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_bad_requests_get_a_clear_answer_and_are_never_forwarded(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    tls: TlsPair,
    no_tracebacks: None,
    name: str,
) -> None:
    proxy = await make_proxy()
    response = await raw_exchange(proxy, tls, BAD_REQUESTS[name], timeout=1.0)
    codes = statuses(response)
    assert codes, f"no HTTP answer to {name}: {response[:200]!r}"
    assert 400 <= codes[0] < 500, (name, codes)
    assert upstream.requests == []
    # and the proxy still serves
    async with proxy.session.get(proxy.url + "/v2/", headers={"Authorization": PULL}) as resp:
        assert resp.status == 200


async def test_http10_and_pipelined_requests(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    proxy = await make_proxy()
    old = await raw_exchange(proxy, tls, request("GET /v2/ HTTP/1.0", f"Authorization: {PULL}"))
    assert statuses(old) == [200] and old.startswith(b"HTTP/1.")
    two = request("GET /v2/a/tags/list HTTP/1.1", f"Authorization: {PULL}") + request(
        "GET /v2/b/tags/list HTTP/1.1", f"Authorization: {PULL}", "Connection: close"
    )
    assert statuses(await raw_exchange(proxy, tls, two, answers=2)) == [200, 200]
    assert [r.path_qs for r in upstream.requests] == ["/v2/", "/v2/a/tags/list", "/v2/b/tags/list"]


async def test_method_override_is_not_honoured(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    headers = {
        "Authorization": PULL,
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
    }
    async with proxy.session.get(proxy.url + "/v2/a/manifests/1", headers=headers) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert seen.method == "GET"
    assert not {"x-http-method-override", "x-http-method", "x-method-override"} & set(seen.headers)


async def test_query_cannot_name_another_repository(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    acl = "acl:\n  - users: [pull]\n    repositories: ['mine/**']\n    actions: ['*']\n"
    proxy = await make_proxy(acl)
    for path in (
        "/v2/theirs/manifests/1?name=mine/app",
        "/v2/theirs/blobs/uploads/?repository=mine/app",
        "/v2/mine/app/../../theirs/manifests/1",
    ):
        async with proxy.session.request(
            "PUT" if "manifests" in path else "POST",
            proxy.url + path,
            headers={"Authorization": PULL},
        ) as resp:
            assert resp.status in (400, 403, 404, 405)
    assert upstream.requests == []


async def test_slowloris_is_cut_and_others_are_served(
    make_proxy: ProxyFactory, tls: TlsPair
) -> None:
    proxy = await make_proxy("timeouts:\n  keepalive: 1\n")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
    )
    closed = False
    for byte in b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            closed = True
            break
        async with proxy.session.get(proxy.url + "/v2/", headers={"Authorization": PULL}) as r:
            assert r.status == 200  # everyone else is served meanwhile
        if reader.at_eof():
            closed = True
            break
        await asyncio.sleep(0.05)
    if not closed:
        closed = await asyncio.wait_for(reader.read(), 5) == b""
    assert closed
    writer.close()


async def test_throttle_after_failed_logins(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    proxy = await make_proxy("throttle:\n  attempts: 3\ntrusted_proxies: [127.0.0.1/32]\n")
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        async with proxy.session.get(
            proxy.url + "/v2/", headers={**attacker, "Authorization": basic("push", "guess")}
        ) as resp:
            assert resp.status == 401
    async with proxy.session.get(
        proxy.url + "/v2/", headers={**attacker, "Authorization": PUSH}
    ) as resp:
        assert resp.status == 429  # even the right password waits: no oracle
        assert int(resp.headers["Retry-After"]) >= 1
        assert json.loads(await resp.text())["errors"][0]["code"] == "TOOMANYREQUESTS"
    # The real user, from another address, is not locked out by the attacker.
    async with proxy.session.get(
        proxy.url + "/v2/", headers={"X-Forwarded-For": "198.51.100.1", "Authorization": PUSH}
    ) as resp:
        assert resp.status == 200
    assert "throttled login for 'push' from 203.0.113.7" in caplog.text
    assert "authentication failed for 'push' from 203.0.113.7" in caplog.text


async def test_forwarded_for_is_ignored_from_untrusted_peers(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy("throttle:\n  attempts: 2\n")
    for i in range(2):  # rotating X-Forwarded-For does not dodge the throttle
        async with proxy.session.get(
            proxy.url + "/v2/",
            headers={"X-Forwarded-For": f"203.0.113.{i}", "Authorization": basic("x", "y")},
        ) as resp:
            assert resp.status == 401
    async with proxy.session.get(
        proxy.url + "/v2/",
        headers={"X-Forwarded-For": "203.0.113.99", "Authorization": basic("x", "y")},
    ) as resp:
        assert resp.status == 429


async def test_audit_log_records_push_and_delete_decisions(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="regproxy.audit")
    proxy = await make_proxy()
    digest = "sha256:" + "1" * 64
    for method, path, auth in (
        ("PUT", "/v2/team/app/manifests/v1", PUSH),
        ("DELETE", f"/v2/team/app/manifests/{digest}", PULL),
        ("GET", "/v2/team/app/manifests/v1", PULL),
    ):
        async with proxy.session.request(
            method, proxy.url + path, headers={"Authorization": auth}
        ) as resp:
            await resp.read()
    entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "regproxy.audit"]
    assert [
        (e["user"], e["action"], e["repository"], e["reference"], e["status"]) for e in entries
    ] == [("push", "push", "team/app", "v1", 200), ("pull", "delete", "team/app", digest, 403)]
    assert all(e["client"] == "127.0.0.1" and e["time"].endswith("+00:00") for e in entries)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle() -> tuple[int, int]:
    for _ in range(20):
        await asyncio.sleep(0.05)
    gc.collect()
    return open_fds(), len(asyncio.all_tasks())


async def test_upstream_dies_mid_push(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    async def dies(request: web.Request) -> web.StreamResponse:
        await request.content.read(1024 * 1024)
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    upstream.handlers["/v2/a/blobs/uploads/u1"] = dies
    upstream.streaming.add("/v2/a/blobs/uploads/u1")  # it dies after 1 MiB of 4
    proxy = await make_proxy()

    async def body() -> object:
        for _ in range(64):
            yield b"x" * 65536

    async with proxy.session.patch(
        proxy.url + proxy.upload("/v2/a/blobs/uploads/u1", "push"),
        data=body(),
        headers={"Authorization": PUSH},
    ) as resp:
        assert resp.status == 502  # never a success for a half-finished upload
    async with proxy.session.get(proxy.url + "/v2/", headers={"Authorization": PULL}) as resp:
        assert resp.status == 200


async def test_client_gone_mid_transfer_leaks_nothing(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair
) -> None:
    upstream_done = asyncio.Event()
    digest = "sha256:" + "2" * 64

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(1 << 34)})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"y" * 65536)
        finally:
            upstream_done.set()

    upstream.handlers[f"/v2/a/blobs/{digest}"] = endless
    proxy = await make_proxy()
    async with proxy.session.get(proxy.url + "/v2/", headers={"Authorization": PULL}) as resp:
        assert resp.status == 200
    fds, tasks = await settle()
    for _ in range(3):
        # Download: read a little, then vanish.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
        )
        writer.write(request(f"GET /v2/a/blobs/{digest} HTTP/1.1", f"Authorization: {PULL}"))
        await reader.read(1 << 20)
        writer.transport.abort()
        await asyncio.wait_for(upstream_done.wait(), 10)  # the upstream request was cancelled
        upstream_done.clear()
        # Upload: send part of a declared body, then vanish.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.server.port, ssl=tls.client_context(), server_hostname="localhost"
        )
        writer.write(
            request(
                "PATCH /v2/a/blobs/uploads/u2 HTTP/1.1",
                f"Authorization: {PUSH}",
                "Content-Length: 10000000",
                body=b"z" * 100_000,
            )
        )
        await writer.drain()
        writer.transport.abort()
    for _ in range(200):  # until the connections are closed and their tasks done (a bound)
        gc.collect()
        if open_fds() <= fds and len(asyncio.all_tasks()) <= tasks:
            break
        await asyncio.sleep(0.05)
    assert open_fds() <= fds and len(asyncio.all_tasks()) <= tasks


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_form_bodies_cannot_smuggle_mount_parameters(
    make_proxy: ProxyFactory, upstream: FakeUpstream, content_type: str
) -> None:
    acl = "acl:\n  - users: [pull]\n    repositories: ['pull/**']\n    actions: ['*']\n"
    proxy = await make_proxy(acl)
    body = "mount=sha256:" + "a" * 64 + "&from=secret/app"
    async with proxy.session.post(
        proxy.url + "/v2/pull/x/blobs/uploads/",
        data=body,
        headers={"Authorization": PULL, "Content-Type": content_type},
    ) as resp:
        assert resp.status == 400
    assert upstream.requests == []


MOUNT = "sha256:" + "a" * 64
PUSH_ONLY_OWN = "acl:\n  - users: [push]\n    repositories: ['push/**']\n    actions: ['*']\n"
MULTIPART_MOUNT = (
    f'--x\r\nContent-Disposition: form-data; name="mount"\r\n\r\n{MOUNT}\r\n'
    '--x\r\nContent-Disposition: form-data; name="from"\r\n\r\nsecret/app\r\n--x--\r\n'
).encode()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        # Go's strings.ToLower maps U+0130 to an ASCII 'i': both are form types to the registry.
        ("mult\u0130part/form-data; boundary=x", MULTIPART_MOUNT),
        ("appl\u0130cation/x-www-form-urlencoded", f"mount={MOUNT}&from=secret/app".encode()),
        ("MULTIPART/FORM-DATA; boundary=x", MULTIPART_MOUNT),
        ("\u00a0multipart/form-data; boundary=x", MULTIPART_MOUNT),  # Go trims the NBSP
    ],
)
async def test_a_form_spelled_outside_ascii_cannot_mount_another_repository(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tls: TlsPair, content_type: str, body: bytes
) -> None:
    """The issue's bypass: a push user's upload start whose body carries mount/from, under a
    Content-Type Python's lower() does not see as a form, never reaches the registry."""
    proxy = await make_proxy(PUSH_ONLY_OWN)
    head = request(
        "POST /v2/push/app/blobs/uploads/ HTTP/1.1",
        f"Authorization: {PUSH}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    )
    assert statuses(await raw_exchange(proxy, tls, head + body)) == [400]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("query", "headers", "body", "forwarded"),
    [
        ("", ("Content-Length: 0",), b"", True),  # what docker, podman and containerd send
        ("", (), b"", True),  # curl -X POST
        ("", ("Content-Length: 0", "Content-Type: application/octet-stream"), b"", True),
        (f"?digest={MOUNT}", ("Content-Length: 3",), b"abc", True),  # a monolithic upload
        ("", ("Content-Length: 3",), b"abc", False),
        ("", ("Content-Type: application/octet-stream", "Content-Length: 7"), b"mount=x", False),
        ("", ("Transfer-Encoding: chunked",), b"0\r\n\r\n", False),
        ("?digest=", ("Content-Length: 3",), b"abc", False),  # FormValue("digest") == ""
        ("?digest=a%zz", ("Content-Length: 3",), b"abc", False),  # Go would not see digest
    ],
)
async def test_an_upload_start_without_digest_has_no_body(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    tls: TlsPair,
    query: str,
    headers: tuple[str, ...],
    body: bytes,
    forwarded: bool,
) -> None:
    proxy = await make_proxy()
    head = request(
        f"POST /v2/a/blobs/uploads/{query} HTTP/1.1",
        f"Authorization: {PUSH}",
        *headers,
        "Connection: close",
    )
    assert statuses(await raw_exchange(proxy, tls, head + body)) == [200 if forwarded else 400]
    assert len(upstream.requests) == forwarded


async def test_concurrent_guesses_do_not_slip_past_the_throttle(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy("throttle:\n  attempts: 5\n")

    async def attempt(password: str) -> int:
        headers = {"Authorization": basic("push", password)}
        async with proxy.session.get(proxy.url + "/v2/", headers=headers) as resp:
            return resp.status

    statuses_seen = await asyncio.gather(*(attempt(f"guess{i}") for i in range(40)))
    assert statuses_seen.count(401) == 5  # exactly the allowed attempts were verified
    assert statuses_seen.count(429) == 35


async def test_parallel_requests_with_the_right_password_are_not_throttled(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy("throttle:\n  attempts: 2\n")

    async def pull() -> int:
        headers = {"Authorization": PULL}
        async with proxy.session.get(proxy.url + "/v2/a/tags/list", headers=headers) as resp:
            return resp.status

    assert await asyncio.gather(*(pull() for _ in range(40))) == [200] * 40  # a cold cache


async def test_catalog_request_with_a_body_does_not_stall(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    async with proxy.session.get(
        proxy.url + "/v2/_catalog", data=b"x" * 10, headers={"Authorization": PULL}
    ) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert "content-length" not in seen.headers and seen.body_length == 0


async def test_a_mismatched_certificate_on_reload_keeps_the_old_one(
    make_proxy: ProxyFactory, tls: TlsPair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import trustme

    proxy = await make_proxy()
    directory = tmp_path_factory.mktemp("half")
    (directory / "server.crt").write_bytes(
        trustme.CA().issue_cert("localhost").cert_chain_pems[0].bytes()
    )
    (directory / "server.key").write_bytes(tls.key.read_bytes())  # the old key: no match
    text = proxy.config.read_text().split("tls:")[0]
    proxy.config.write_text(
        text + f"tls:\n  cert: {directory / 'server.crt'}\n  key: {directory / 'server.key'}\n"
    )
    assert await proxy.state.reload("test") is True  # the rest of the config is fine
    async with proxy.session.get(proxy.url + "/v2/", headers={"Authorization": PULL}) as resp:
        assert resp.status == 200  # handshakes still use the old certificate


async def test_an_endless_catalog_costs_a_bounded_number_of_upstream_pages(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """An upstream whose Link never ends, full of repositories the caller may not see: the
    listing gives up after LISTED_PAGES pages, then one client request reads MAX_PAGES
    pages, answers with what it found and a Link to continue that does not name any
    repository the caller may not see."""
    from urllib.parse import parse_qs, urlsplit

    from proxy.upstream.catalog import LISTED_PAGES, MAX_PAGES

    async def endless(request: web.Request) -> web.StreamResponse:
        after = parse_qs(urlsplit(str(request.rel_url)).query).get("last", [""])[0]
        start = int(after.split("/")[1]) + 1 if after else 0
        names = [f"secret/{n:09d}" for n in range(start, start + 1000)]
        link = f'</v2/_catalog?last={names[-1]}&n=1000>; rel="next"'
        return web.json_response({"repositories": names}, headers={"Link": link})

    upstream.handlers["/v2/_catalog"] = endless
    proxy = await make_proxy("acl:\n  - repositories: [public/**]\n    actions: [pull]\n")
    async with proxy.session.get(
        proxy.url + "/v2/_catalog?n=10", headers={"Authorization": PULL}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["repositories"] == []
        link = resp.headers["Link"]
    assert len(upstream.requests) == LISTED_PAGES + MAX_PAGES
    assert "secret" not in link and "last=~" in link
    del upstream.requests[:]
    async with proxy.session.get(
        proxy.url + link[1 : link.index(">")], headers={"Authorization": PULL}
    ) as resp:
        assert resp.status == 200  # the sealed position continues the listing
    # The listing's failure is remembered a while: the next request pages at once (unless
    # that while has passed on a slow machine).
    assert len(upstream.requests) in (MAX_PAGES, LISTED_PAGES + MAX_PAGES)
    continued = upstream.requests[-MAX_PAGES].path_qs
    assert "last=secret/000009999" in continued
