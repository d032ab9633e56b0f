"""The request path against a recording fake upstream: decisions, answers, headers."""

from __future__ import annotations

import gc
import json

import aiohttp
import pytest
from aiohttp import web

from proxy.guards.uploads import bind_location
from proxy.pipeline.context import RequestContext
from tests.conftest import USERS, FakeUpstream, KeptConnection, ProxyFactory, TlsPair, basic
from tests.unit.test_routes import CATALOG_REFUSALS, REFUSALS, Answer

API = "Docker-Distribution-Api-Version"
DIGEST = "sha256:" + "a" * 64


def assert_spec_error(body: str, code: str) -> None:
    errors = json.loads(body)["errors"]
    assert [e["code"] for e in errors] == [code]
    assert errors[0]["message"]


async def test_anonymous_ping_is_challenged_and_not_forwarded(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    async with proxy.session.get(proxy.url + "/v2/") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="Registry Authentication"'
        assert resp.headers.getall(API) == ["registry/2.0"]
        assert_spec_error(await resp.text(), "UNAUTHORIZED")
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("user", "method", "path", "status"),
    [
        ("pull", "GET", "/v2/", 200),
        ("pull", "GET", "/v2/library/app/manifests/latest", 200),
        ("pull", "HEAD", f"/v2/library/app/blobs/{DIGEST}", 200),
        ("pull", "GET", "/v2/library/app/tags/list", 200),
        ("pull", "POST", "/v2/library/app/blobs/uploads/", 403),
        ("pull", "PUT", "/v2/library/app/manifests/v2", 403),
        ("pull", "PATCH", "/v2/library/app/blobs/uploads/abc-123", 403),
        ("pull", "DELETE", "/v2/library/app/manifests/latest", 403),
        ("other", "DELETE", f"/v2/library/app/blobs/{DIGEST}", 403),
        ("push", "POST", "/v2/library/app/blobs/uploads/", 200),
        ("push", "PUT", "/v2/library/app/manifests/v2", 200),
        ("push", "PATCH", "/v2/library/app/blobs/uploads/abc-123", 200),
        ("push", "DELETE", "/v2/library/app/manifests/latest", 200),
        ("push", "GET", "/v2/library/app/manifests/latest", 200),
    ],
)
async def test_recipe_policy(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    user: str,
    method: str,
    path: str,
    status: int,
) -> None:
    proxy = await make_proxy()
    sent = proxy.upload(path, user) if method == "PATCH" else path  # as the proxy handed it out
    async with proxy.session.request(method, proxy.url + sent, headers=proxy.auth(user)) as resp:
        assert resp.status == status
        assert resp.headers.getall(API) == ["registry/2.0"]
        if status == 403:
            assert_spec_error(await resp.text(), "DENIED")
    forwarded = [(r.method, r.path_qs) for r in upstream.requests]
    assert forwarded == ([(method, path)] if status == 200 else [])


@pytest.mark.parametrize(
    ("auth_header", "status"),
    [
        (basic("pull", "wrong"), 401),
        (basic("nobody", "pull-pw"), 401),
        (basic("", ""), 401),
        ("Bearer abc", 401),
        ("Basic !!!notbase64", 400),
        ("Basic " + "dXNlcg==", 400),  # "user", no colon
        ("Basic " + "A" * 5000, 400),
    ],
)
async def test_bad_credentials(
    make_proxy: ProxyFactory, upstream: FakeUpstream, auth_header: str, status: int
) -> None:
    proxy = await make_proxy()
    headers = {"Authorization": auth_header}
    async with proxy.session.get(proxy.url + "/v2/", headers=headers) as resp:
        assert resp.status == status
        assert resp.headers.getall(API) == ["registry/2.0"]
        assert_spec_error(await resp.text(), "UNAUTHORIZED")
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert upstream.requests == []


async def test_several_authorization_headers_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    good = proxy.auth("push")["Authorization"]
    headers = [("Authorization", good), ("Authorization", good)]
    async with proxy.session.get(proxy.url + "/v2/", headers=headers) as resp:
        assert resp.status == 400
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2foo", 404),
        ("GET", "/", 404),
        ("GET", "/error/", 404),
        ("GET", "/v1/_ping", 404),
        ("OPTIONS", "/v2/", 405),
        ("TRACE", "/v2/", 405),
        ("POST", "/v2/library/app/manifests/latest", 405),
        ("GET", "/v2/library/../secret/manifests/latest", 400),
        ("GET", "/v2/library%2Fapp/manifests/latest", 400),
    ],
)
async def test_refused_before_authentication_and_never_forwarded(
    make_proxy: ProxyFactory, upstream: FakeUpstream, method: str, path: str, status: int
) -> None:
    proxy = await make_proxy()
    url = proxy.url + path
    async with proxy.session.request(
        method, aiohttp.client.URL(url, encoded=True), headers=proxy.auth("push")
    ) as resp:
        assert resp.status == status
        assert resp.headers.getall(API) == ["registry/2.0"]
        json.loads(await resp.text())
    assert upstream.requests == []


@pytest.mark.parametrize("answer", REFUSALS + CATALOG_REFUSALS)
async def test_every_refusal_answered_by_the_proxy(
    make_proxy: ProxyFactory, upstream: FakeUpstream, answer: Answer
) -> None:
    proxy = await make_proxy()
    target = proxy.url + answer.path + (f"?{answer.query}" if answer.query else "")
    async with proxy.session.request(
        answer.method, aiohttp.client.URL(target, encoded=True), headers=proxy.auth("push")
    ) as resp:
        assert resp.status == answer.status
        assert resp.headers.getall(API) == ["registry/2.0"]
        if answer.method != "HEAD":
            assert_spec_error(await resp.text(), answer.code)
        allow = resp.headers.get("Allow")
        assert (allow is not None) is (answer.status == 405)
        if allow is not None:  # the endpoint's own methods, and never the refused one
            assert answer.method not in allow.split(", ")
            assert set(allow.split(", ")) <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    assert upstream.requests == []


async def test_request_headers_seen_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    headers = {
        **proxy.auth("pull"),
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "drop me",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "http",
        "Accept": "application/vnd.oci.image.manifest.v1+json",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
    }
    async with proxy.session.get(
        proxy.url + "/v2/a/manifests/latest",
        headers=headers,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert seen.headers["host"] == [f"localhost:{proxy.server.port}"]
    assert seen.headers["x-forwarded-proto"] == ["https"]
    assert seen.headers["x-forwarded-for"] == ["127.0.0.1"]
    assert seen.headers["accept"] == ["application/vnd.oci.image.manifest.v1+json"]
    # Nothing the client did not send is added (no User-Agent, no Accept-Encoding).
    for absent in (
        "authorization",
        "x-secret-hop",
        "proxy-authorization",
        "user-agent",
        "accept-encoding",
    ):
        assert absent not in seen.headers
    assert "x-secret-hop" not in seen.headers.get("connection", [""])[0].lower()


async def test_response_headers_api_version_once_and_hop_by_hop_dropped(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def twice(_: web.Request) -> web.StreamResponse:
        response = web.Response(status=404, text='{"errors":[]}')
        response.headers.add(API, "registry/2.0")
        response.headers.add(API, "registry/2.0")
        response.headers["Connection"] = "X-Hop"
        response.headers["X-Hop"] = "1"
        response.headers["Docker-Content-Digest"] = DIGEST
        return response

    upstream.handlers["/v2/a/manifests/missing"] = twice
    proxy = await make_proxy()
    async with proxy.session.get(
        proxy.url + "/v2/a/manifests/missing", headers=proxy.auth("pull")
    ) as resp:
        assert resp.status == 404
        assert resp.headers.getall(API) == ["registry/2.0"]
        assert "X-Hop" not in resp.headers
        assert resp.headers["Docker-Content-Digest"] == DIGEST
        assert await resp.text() == '{"errors":[]}'


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (
            "{up}/v2/a/blobs/uploads/u1?_state=x%3D",
            "https://{host}/v2/a/blobs/uploads/u1?_state=x%3D",
        ),
        ("/v2/a/blobs/uploads/u1", "/v2/a/blobs/uploads/u1"),
        ("https://elsewhere.example/v2/x", "https://elsewhere.example/v2/x"),
    ],
)
async def test_location_rewritten_only_when_it_points_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream, location: str, expected: str
) -> None:
    async def moved(_: web.Request) -> web.StreamResponse:
        return web.Response(status=202, headers={"Location": location.format(up=upstream.url)})

    upstream.handlers["/v2/a/blobs/uploads/"] = moved
    proxy = await make_proxy()
    async with proxy.session.post(
        proxy.url + "/v2/a/blobs/uploads/", headers=proxy.auth("push")
    ) as resp:
        assert resp.status == 202
        host = f"localhost:{proxy.server.port}"
        # An upload's Location comes back signed for whoever started it (proxy.guards.uploads).
        signed = bind_location(expected.format(host=host), "a", proxy.server.upload_key, "push")
        assert resp.headers["Location"] == signed
        assert ("_regproxy=" in signed) == ("/uploads/" in expected)


async def test_connection_cannot_drop_host_and_upstream_locations_never_leak(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """The issue's case: `Connection: Host` made the proxy drop Host, and the registry built
    the upload Location from its own address (scheme from X-Forwarded-Proto), which the
    rewrite missed because the schemes differ. The fake upstream builds it as the registry."""

    async def start(request: web.Request) -> web.StreamResponse:
        scheme = request.headers.get("X-Forwarded-Proto", "http")
        location = f"{scheme}://{request.headers['Host']}/v2/a/blobs/uploads/u1?_state=s"
        return web.Response(status=202, headers={"Location": location, "Connection": "Location"})

    upstream.handlers["/v2/a/blobs/uploads/"] = start
    proxy = await make_proxy()
    host = f"localhost:{proxy.server.port}"
    async with proxy.session.post(
        proxy.url + "/v2/a/blobs/uploads/",
        headers={**proxy.auth("push"), "Connection": "Host, X-Secret-Hop", "X-Secret-Hop": "1"},
    ) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]  # and the upload binding (proxy.guards.uploads)
        assert location.startswith(f"https://{host}/v2/a/blobs/uploads/u1?_state=s&_regproxy=")
    (seen,) = upstream.requests
    assert seen.headers["host"] == [host] and "x-secret-hop" not in seen.headers

    async def internal(_: web.Request) -> web.StreamResponse:
        address = upstream.url.removeprefix("http://")
        return web.Response(status=202, headers={"Location": f"https://{address}/v2/a/x"})

    upstream.handlers["/v2/a/blobs/uploads/"] = internal
    async with proxy.session.post(
        proxy.url + "/v2/a/blobs/uploads/", headers=proxy.auth("push")
    ) as resp:
        assert resp.headers["Location"] == f"https://{host}/v2/a/x"


async def test_upstream_refused_is_502(make_proxy: ProxyFactory) -> None:
    from devtools.net import free_socket

    sock = free_socket()
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    proxy = await make_proxy(upstream_url=dead)
    for _ in range(2):  # and it keeps serving
        async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
            assert resp.status == 502
            assert resp.headers.getall(API) == ["registry/2.0"]
            assert_spec_error(await resp.text(), "UNAVAILABLE")


async def test_upstream_too_slow_is_504(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    import asyncio

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response(text="late")

    upstream.handlers["/v2/slow/tags/list"] = slow
    proxy = await make_proxy("timeouts:\n  read: 0.5\n")
    async with proxy.session.get(proxy.url + "/v2/slow/tags/list", headers=proxy.auth("pull")) as r:
        assert r.status == 504
        assert r.headers.getall(API) == ["registry/2.0"]
    async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
        assert resp.status == 200


async def test_upstream_reset_mid_body_cuts_the_client(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10 * 1024 * 1024)})
        await response.prepare(request)
        await response.write(b"x" * 1024 * 1024)
        assert request.transport is not None
        request.transport.abort()
        return response

    upstream.handlers[f"/v2/a/blobs/{DIGEST}"] = broken
    proxy = await make_proxy()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.session.get(
            proxy.url + f"/v2/a/blobs/{DIGEST}", headers=proxy.auth("pull")
        ) as resp:
            assert resp.status == 200
            await resp.read()
    async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
        assert resp.status == 200


async def test_pings_are_answered_locally_while_the_upstream_is_known_up(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    for _ in range(3):
        async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
            assert resp.status == 200 and await resp.read() == b"{}"
            assert resp.headers.getall(API) == ["registry/2.0"]
    assert [r.path_qs for r in upstream.requests] == ["/v2/"]  # only the first went upstream
    async with proxy.session.get(proxy.url + "/v2/") as resp:
        assert resp.status == 401  # still authenticated first


async def test_an_idle_connection_holds_no_request_state(
    make_proxy: ProxyFactory, tls: TlsPair
) -> None:
    """aiohttp keeps each connection's last request until the next one arrives: what the
    request path attached to it is let go once it is answered and logged, so idle keep-alive
    connections hold no request context (issue 24: memory per connection)."""
    proxy = await make_proxy()
    port = int(proxy.url.rsplit(":", 1)[1])
    held = [await KeptConnection.open(port, tls) for _ in range(8)]
    for connection in held:
        assert await connection.get("/v2/") == 401
        assert await connection.get("/v2/", basic("pull", USERS["pull"])) == 200
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, RequestContext)] == []
    for connection in held:
        await connection.close()
