"""Rate limits through the real request path, in-process against the recording fake upstream:
429 `TOOMANYREQUESTS` with `Retry-After` and Docker Hub's headers, overrides by group and user,
anonymous budgets per address, blob bytes counted as sent, a window's end (in real time, and
on the guard's injected clock), answers the registry refuses given back, the metric, two
workers of one `regproxy serve` counting together through the worker mesh, and two replicas
through a real redis-server, also while it is away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from devtools.net import free_port, free_socket
from proxy.conf.snapshot import load_snapshot
from proxy.core.addresses import origin
from proxy.guards.ratelimit import RateLimits
from proxy.http.routes import Operation, classify
from proxy.pipeline.context import RequestContext
from proxy.policy.identity import Identity
from proxy.state.store import LocalStore
from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    TlsPair,
    basic,
    htpasswd_text,
    samples,
    scrape,
    serving,
    until,
    write_setup,
)
from tests.redis_server import RedisServer
from tests.test_quarantine import SETUP, Image, quarantine, refused

MANIFEST = "/v2/test/app/manifests/1"
DIGEST = "sha256:" + "ab" * 32
BLOB = f"/v2/test/app/blobs/{DIGEST}"
ACL = """
acl:
  - anonymous: true
    repositories: ["test/**"]
    actions: [pull]
  - groups: [pusher]
    actions: "*"
  - actions: [pull]
"""
LIMITS = """
rate_limits:
  anonymous:
    manifest_pulls: {limit: 2, per: 6h}
  users:
    manifest_pulls: {limit: 3, per: 6h}
    blob_bytes: {limit: 1500, per: 1h}
    pushes: {limit: 1, per: 1h}
  overrides:
    - groups: [readers]
      manifest_pulls: {limit: 5, per: 6h}
    - users: [push]
      manifest_pulls: unlimited
"""


async def get(
    proxy: RunningProxy,
    path: str,
    user: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    sent = dict(headers or {})
    if user is not None:
        sent.update(proxy.auth(user))
    async with proxy.session.request(method, proxy.url + path, headers=sent) as resp:
        return resp.status, resp.headers, await resp.read()


@pytest.fixture
async def limited(make_proxy: ProxyFactory) -> RunningProxy:
    return await make_proxy(ACL + LIMITS)


async def test_a_spent_budget_gets_429_with_retry_after_and_the_headers(
    limited: RunningProxy,
) -> None:
    seen = []
    for _ in range(3):
        status, headers, _ = await get(limited, MANIFEST, "pull")
        assert status == 200
        assert headers["RateLimit-Limit"] == "3;w=21600"
        seen.append(headers["RateLimit-Remaining"])
    assert seen == ["2;w=21600", "1;w=21600", "0;w=21600"]
    status, headers, body = await get(limited, MANIFEST, "pull")
    assert status == 429
    error = json.loads(body)["errors"][0]
    assert error["code"] == "TOOMANYREQUESTS"
    assert error["message"].startswith(
        "rate limit reached: 3 manifest pulls per 6h (budget users/manifest_pulls); retry in "
    )
    assert 0 < int(headers["Retry-After"]) <= 21600
    assert headers["RateLimit-Remaining"] == "0;w=21600"
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    # A HEAD counts nothing and is never refused: it says what is left (as Docker Hub's).
    status, headers, _ = await get(limited, MANIFEST, "pull", "HEAD")
    assert (status, headers["RateLimit-Remaining"]) == (200, "0;w=21600")
    # Tags lists, blobs and pings are other classes, or none.
    assert (await get(limited, "/v2/test/app/tags/list", "pull"))[0] == 200
    assert "RateLimit-Limit" not in (await get(limited, "/v2/", "pull"))[1]


async def test_overrides_by_group_and_user_come_first(limited: RunningProxy) -> None:
    statuses = [(await get(limited, MANIFEST, "other"))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]  # readers: 5, not the users' 3
    for _ in range(10):
        status, headers, _ = await get(limited, MANIFEST, "push")
        assert status == 200 and "RateLimit-Limit" not in headers  # unlimited
    # The override names only manifest pulls: push's blob bytes are the users' budget.
    assert (await get(limited, BLOB, "push"))[1]["RateLimit-Limit"] == "1500;w=3600"


async def test_anonymous_clients_have_a_budget_per_address(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(ACL + LIMITS + "trusted_proxies: [127.0.0.1/32]\n")

    async def pull(address: str) -> int:
        return (await get(proxy, MANIFEST, headers={"X-Forwarded-For": address}))[0]

    assert [await pull("10.0.0.1") for _ in range(3)] == [200, 200, 429]
    assert [await pull("10.0.0.2") for _ in range(2)] == [200, 200]
    # An IPv6 client's /64 is one budget: another address in it finds it spent.
    assert [await pull("2001:db8::1") for _ in range(2)] == [200, 200]
    assert await pull("2001:db8::2") == 429
    assert await pull("2001:db8:0:1::1") == 200


async def test_blob_bytes_are_counted_as_sent_and_refuse_the_next_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    body = secrets.token_bytes(1000)

    async def blob(_: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Docker-Content-Digest": DIGEST})

    upstream.handlers[BLOB] = blob
    proxy = await make_proxy(ACL + LIMITS)
    status, headers, got = await get(proxy, BLOB, "pull")
    assert (status, got, headers["RateLimit-Remaining"]) == (200, body, "1500;w=3600")
    # 1000 sent, under 1500: the second is let through whole, and the budget is then over.
    status, headers, got = await get(proxy, BLOB, "pull")
    assert (status, got, headers["RateLimit-Remaining"]) == (200, body, "500;w=3600")
    status, headers, _ = await get(proxy, BLOB, "pull")
    assert (status, headers["RateLimit-Remaining"]) == (429, "0;w=3600")
    # A HEAD of a blob is not a download: never refused, no headers.
    status, headers, _ = await get(proxy, BLOB, "pull", "HEAD")
    assert status == 200 and "RateLimit-Limit" not in headers


async def test_pushes_count_manifests_and_refuse_new_uploads_once_spent(
    limited: RunningProxy, upstream: FakeUpstream
) -> None:
    async def put(path: str) -> int:
        headers = {**limited.auth("push"), "Content-Type": "application/json"}
        async with limited.session.put(limited.url + path, data=b"{}", headers=headers) as resp:
            return resp.status

    async def start_upload() -> int:
        url = limited.url + "/v2/test/app/blobs/uploads/"
        async with limited.session.post(url, headers=limited.auth("push")) as resp:
            return resp.status

    assert await start_upload() == 200  # counts nothing
    assert await put("/v2/test/app/manifests/1") == 200  # the fake registry's answer
    assert await start_upload() == 429
    assert await put("/v2/test/app/manifests/2") == 429


async def test_what_the_registry_refuses_is_given_back(
    limited: RunningProxy, upstream: FakeUpstream
) -> None:
    async def unknown(_: web.Request) -> web.StreamResponse:
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)

    upstream.handlers["/v2/test/app/manifests/missing"] = unknown
    for _ in range(5):
        status, headers, _ = await get(limited, "/v2/test/app/manifests/missing", "pull")
        assert (status, headers["RateLimit-Remaining"]) == (404, "3;w=21600")
    assert [(await get(limited, MANIFEST, "pull"))[0] for _ in range(4)] == [200] * 3 + [429]


async def test_a_window_ends_and_the_budget_is_whole_again(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(
        ACL + "rate_limits:\n  users:\n    manifest_pulls: {limit: 1, per: 2s}\n"
    )
    while True:  # start at a window's beginning, so that the second pull is in the same one
        status, _, _ = await get(proxy, MANIFEST, "pull")
        refused, headers, _ = await get(proxy, MANIFEST, "pull")
        # (a third pull to read the refusal could land in the next window on a busy machine)
        if (status, refused) == (200, 429):
            break
    assert 1 <= int(headers["Retry-After"]) <= 2
    await asyncio.sleep(int(headers["Retry-After"]))  # what the client is told to do
    assert (await get(proxy, MANIFEST, "pull"))[0] == 200


async def test_refusals_are_counted_by_budget(make_proxy: ProxyFactory) -> None:
    port = free_port()
    proxy = await make_proxy(ACL + LIMITS + f"metrics:\n  listen: 127.0.0.1:{port}\n")
    key = ("regproxy_rate_limited_total", (("budget", "users/manifest_pulls"),))
    # The counters live as long as the test process: earlier tests may have counted too.
    before = samples((await scrape(port))[1]).get(key, 0)
    for _ in range(5):
        await get(proxy, MANIFEST, "pull")
    assert samples((await scrape(port))[1])[key] - before == 2


async def test_two_workers_count_together(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """`regproxy serve` with two workers, each request on a new connection (so both workers
    take some): the budget holds in all, through the worker mesh."""
    limit = 20
    budget = f"rate_limits:\n  users:\n    manifest_pulls: {{limit: {limit}, per: 6h}}\n"
    extra = ACL + "workers: 2\n" + budget
    config = write_setup(tmp_path, tls, upstream.url, extra)
    port = int(config.read_text().split("listen: 127.0.0.1:")[1].split()[0])
    async with serving(["serve", "-c", str(config)], tmp_path):

        async def pull() -> int:
            connector = aiohttp.TCPConnector(ssl=tls.client_context(), force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(
                    f"https://localhost:{port}{MANIFEST}",
                    headers={"Authorization": basic("pull", "pull-pw")},
                ) as resp,
            ):
                return resp.status

        statuses = []
        for _ in range(2 * limit):  # one after the other, on whichever worker accepts it
            statuses.append(await pull())
        assert statuses.count(200) == limit, statuses
        assert statuses.count(429) == limit


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


async def remaining(proxy: RunningProxy) -> str:
    """What a HEAD (which spends nothing) says is left of pull's manifest pulls."""
    return (await get(proxy, MANIFEST, "pull", "HEAD"))[1]["RateLimit-Remaining"]


async def test_replicas_share_counts_through_redis_and_count_alone_while_it_is_away(
    redis_server: RedisServer, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two replicas (in-process) sharing a real redis-server: what one counts, the other
    refuses on, within a sync; Redis stopped: each counts alone (fail open), /health says
    so, syncs fail and are counted; Redis back: what was counted meanwhile reaches it."""
    port = free_port()
    state = f"state:\n  backend: redis\n  url: {redis_server.url}\n  key_prefix: 't{port}:'\n"
    limits = "rate_limits:\n  users:\n    manifest_pulls: {limit: 6, per: 6h}\n"
    first = await make_proxy(
        ACL + state + limits + f"metrics:\n  listen: 127.0.0.1:{port}\n", directory=tmp_path / "a"
    )
    second = await make_proxy(ACL + state + limits, directory=tmp_path / "b")
    assert [(await get(first, MANIFEST, "pull"))[0] for _ in range(2)] == [200, 200]

    async def says(proxy: RunningProxy, left: str) -> bool:
        return await remaining(proxy) == left

    await until(lambda: says(second, "4;w=21600"))  # within a sync or two
    code, body = await scrape(port, "/health")
    assert (code, json.loads(body)["rate_limits"]) == (200, "shared")

    redis_server.stop()

    async def alone() -> bool:
        return json.loads((await scrape(port, "/health"))[1]).get("rate_limits") == "local"

    await until(alone)
    # Open, counted here: first spends the rest of what it knew of, second still has its 4.
    assert [(await get(first, MANIFEST, "pull"))[0] for _ in range(5)] == [200] * 4 + [429]
    assert await remaining(second) == "4;w=21600"
    failures = ("regproxy_rate_limit_sync_failures_total", ())
    await until(lambda: scraped(port, failures, lambda value: value >= 1))
    redis_server.start()
    # Back: first's four reach Redis, and second learns the total.
    await until(lambda: says(second, "0;w=21600"), seconds=20)
    assert (await get(second, MANIFEST, "pull"))[0] == 429
    assert json.loads((await scrape(port, "/health"))[1])["rate_limits"] == "shared"


async def scraped(
    port: int, name: tuple[str, tuple[tuple[str, str], ...]], holds: Callable[[float], bool]
) -> bool:
    return holds(samples((await scrape(port))[1]).get(name, 0.0))


@contextlib.asynccontextmanager
async def guarded(
    tmp_path: Path, budget: str, now: list[float], sent: int = 0
) -> AsyncIterator[Callable[[str], Awaitable[tuple[int, str | None]]]]:
    """The guard on an injected clock (`now`), in front of a real aiohttp server whose
    answers, let through, send `sent` body bytes while the clock moves on by one window
    minute; yields a GET of a path, as alice: the status and Retry-After."""
    config = tmp_path / "regproxy.yaml"
    (tmp_path / "htpasswd").write_text(htpasswd_text(USERS))
    config.write_text(f"htpasswd: htpasswd\ngroups: null\nrate_limits:\n  users:\n    {budget}\n")
    snapshot, _ = load_snapshot(config, {}, tls=False)
    store = LocalStore()
    await store.start()
    guard = RateLimits(store, clock=lambda: now[0])

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ctx = RequestContext(request, snapshot, origin(request.remote, [], ()))
        operation = classify(request.method, request.path)
        assert isinstance(operation, Operation)
        ctx.operation, ctx.identity = operation, Identity("alice")
        try:
            refused = await guard.check(ctx)
            if refused is not None:
                return refused
            ctx.charge = None  # the registry's answer sent: what it spent stays spent
            if sent:
                ctx.sent = sent
                now[0] += 60  # the transfer outlives the window it began in
            return web.Response(text="let through")
        finally:
            await ctx.close()

    runner = web.ServerRunner(web.Server(handle))
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock).start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as session:

            async def pull(path: str) -> tuple[int, str | None]:
                async with session.get(base + path) as resp:
                    return resp.status, resp.headers.get("Retry-After")

            yield pull
    finally:
        await runner.cleanup()
        await store.close()


def _window_start() -> int:
    # An hour ahead (the store drops windows that ended by the real clock).
    return (int(time.time()) // 60 + 60) * 60


async def test_a_window_rolls_over_on_the_guards_clock(tmp_path: Path) -> None:
    """A window of 60 s ends at a multiple of 60, Retry-After counts down to it, and then the
    budget is whole."""
    start = _window_start()
    now = [start + 40.0]  # 40 s into a window
    async with guarded(tmp_path, "manifest_pulls: {limit: 1, per: 60s}", now) as pull:
        assert await pull(MANIFEST) == (200, None)
        assert await pull(MANIFEST) == (429, "20")
        now[0] = start + 59.2
        assert await pull(MANIFEST) == (429, "1")
        now[0] = start + 60.0  # the next window
        assert await pull(MANIFEST) == (200, None)
        assert await pull(MANIFEST) == (429, "60")


async def test_blob_bytes_count_in_the_window_the_transfer_ends_in(tmp_path: Path) -> None:
    # The attack: start a large blob GET in the last second of a window, so that its bytes
    # are counted in a window that is about to end, and have a whole budget again at once.
    start = _window_start()
    now = [start + 59.5]
    async with guarded(tmp_path, "blob_bytes: {limit: 1000, per: 60s}", now, 5000) as pull:
        assert await pull(BLOB) == (200, None)  # ends in the next window, 5000 bytes sent
        assert await pull(BLOB) == (429, "1")


async def test_a_pull_the_proxy_refuses_after_the_answer_is_given_back(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # The attack on a budget: a tag whose answer the quarantine refuses (403, the registry
    # said 200) must not spend a manifest pull of whoever asked.
    image = Image(upstream, "spent", "test/app")
    proxy = await make_proxy(ACL + LIMITS + SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", "INC-1")
    path = f"/v2/test/app/manifests/{image.digest}"
    await until(lambda: refused(proxy, "HEAD", path), what="never quarantined")  # spends none
    for _ in range(5):
        status, headers, body = await get(proxy, "/v2/test/app/manifests/v1", "pull")
        assert status == 403, (headers, body)
    assert [(await get(proxy, MANIFEST, "pull"))[0] for _ in range(4)] == [200] * 3 + [429]
