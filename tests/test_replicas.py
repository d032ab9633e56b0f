"""regproxy with `state: {backend: redis}` against a real redis-server, in-process: two proxies
share throttle counts; users, groups and per-user upstreams in Redis (written by `regproxy
passwd --redis`) take effect on both; Redis away is degraded, never an open door."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from devtools.net import free_port, free_socket
from proxy.authn.credentials import hash_password
from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    TlsPair,
    basic,
    htpasswd_text,
    regproxy,
    samples,
    scrape,
    serving,
    until,
    write_setup,
)
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def state_yaml(server: RedisServer, prefix: str, backends: str = "[htpasswd, redis]") -> str:
    return (
        f"state:\n  backend: redis\n  url: {server.url}\n  key_prefix: '{prefix}'\n"
        f"auth_backends: {backends}\n"
    )


async def passwd(server: RedisServer, prefix: str, *args: str, stdin: str = "") -> str:
    """`regproxy passwd --redis URL ...` (without blocking the proxies' event loop); its
    output (it must succeed)."""
    argv = ["passwd", "--redis", server.url, "--key-prefix", prefix, *args]
    done = await asyncio.to_thread(regproxy, *argv, cwd=Path.cwd(), stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def status(proxy: RunningProxy, user: str, password: str, path: str = "/v2/") -> int:
    method = "POST" if path.endswith("/uploads/") else "GET"
    headers = {"Authorization": basic(user, password)}
    async with proxy.session.request(method, proxy.url + path, headers=headers) as resp:
        return resp.status


async def answers(proxy: RunningProxy, user: str, password: str, expected: int) -> None:
    async def check() -> bool:
        return await status(proxy, user, password) == expected

    await until(check)


Pair = tuple[RunningProxy, RunningProxy, str]


@pytest.fixture
async def pair(
    redis_server: RedisServer, make_proxy: ProxyFactory, tmp_path: Path
) -> Callable[[int], Awaitable[Pair]]:
    """`await pair(attempts)`: two proxies (two replicas) sharing the Redis, and their key
    prefix."""

    async def start(attempts: int) -> Pair:
        prefix = f"t{secrets.token_hex(3)}:"
        extra = state_yaml(redis_server, prefix) + f"throttle:\n  attempts: {attempts}\n"
        first = await make_proxy(extra, directory=tmp_path / "one")
        second = await make_proxy(extra, directory=tmp_path / "two")
        return first, second, prefix

    return start


async def test_guesses_spread_over_replicas_are_throttled_after_the_total(
    pair: Callable[[int], Awaitable[Pair]],
) -> None:
    first, second, _ = await pair(3)
    for proxy in (first, second, first):
        assert await status(proxy, "pull", "wrong") == 401
    # The third failure went through `first`: `second` hears of it and refuses too.
    await answers(second, "pull", "wrong", 429)
    assert await status(first, "pull", "pull-pw") == 429  # locked for that address
    assert await status(first, "push", "push:pw") == 200  # not for other users


async def test_a_burst_of_guesses_over_replicas_and_workers_gets_the_limit_in_all(
    redis_server: RedisServer, tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """#23 finding 10: 18 wrong passwords for one user sent at once, 6 to each of 3 replicas
    (`regproxy serve`, one with two workers) sharing Redis, with `throttle.attempts: 5`: 16
    were checked (401), because each worker counted only its own attempts under way. Now
    every attempt under way is counted in Redis before its password is checked: 5 at most."""
    prefix = f"t{secrets.token_hex(3)}:"
    ports = []
    async with contextlib.AsyncExitStack() as stack:
        for n, workers in enumerate((1, 2, 1)):
            directory = tmp_path / f"replica-{n}"
            directory.mkdir()
            extra = (
                state_yaml(redis_server, prefix, "[htpasswd]")
                + f"workers: {workers}\nthrottle:\n  attempts: 5\n"
            )
            config = write_setup(directory, tls, upstream.url, extra)
            # A cost-10 hash, as `regproxy passwd` writes: every guess is under way at once.
            (directory / "htpasswd").write_text(
                htpasswd_text(USERS).replace(
                    htpasswd_text({"pull": USERS["pull"]}),
                    f"pull:{hash_password(USERS['pull'], cost=10)}\n",
                )
            )
            await stack.enter_async_context(serving(["serve", "-c", str(config)], directory))
            ports.append(int(config.read_text().split("listen: 127.0.0.1:")[1].split()[0]))

        async def guess(port: int, n: int) -> int:
            connector = aiohttp.TCPConnector(ssl=tls.client_context(), force_close=True)
            headers = {"Authorization": basic("pull", f"guess-{n}")}
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"https://localhost:{port}/v2/", headers=headers) as resp,
            ):
                return resp.status

        statuses = await asyncio.gather(
            *(guess(port, 6 * r + n) for r, port in enumerate(ports) for n in range(6))
        )
        assert sorted(set(statuses)) <= [401, 429], statuses
        assert 1 <= statuses.count(401) <= 5, statuses  # the README's bound: attempts, in all


async def test_users_in_redis_take_effect_on_every_replica(
    pair: Callable[[int], Awaitable[Pair]], redis_server: RedisServer
) -> None:
    first, second, prefix = await pair(100)
    assert await status(first, "alice", "a-pw") == 401  # not yet a user
    added = await passwd(redis_server, prefix, "alice", "--stdin", "--cost", "4", stdin="a-pw\n")
    assert added == "added user alice in Redis\n"
    for proxy in (first, second):
        await answers(proxy, "alice", "a-pw", 200)
    push = "/v2/alice/app/blobs/uploads/"
    assert await status(first, "alice", "a-pw", push) == 403  # no group yet
    await passwd(redis_server, prefix, "alice", "--stdin", "--cost", "4", "--groups", "pusher",
           stdin="new-pw\n")  # fmt: skip
    for proxy in (first, second):
        await answers(proxy, "alice", "a-pw", 401)
        assert await status(proxy, "alice", "new-pw") == 200
        assert await status(proxy, "alice", "new-pw", push) == 200  # forwarded: the fake says 200
    await passwd(redis_server, prefix, "alice", "--delete")
    for proxy in (first, second):
        await answers(proxy, "alice", "new-pw", 401)
    assert await status(first, "pull", "pull-pw") == 200  # htpasswd users throughout


async def test_a_bad_record_refuses_its_user(
    redis_server: RedisServer, make_proxy: ProxyFactory
) -> None:
    prefix = f"t{secrets.token_hex(3)}:"
    proxy = await make_proxy(state_yaml(redis_server, prefix))
    client = redis_server.client()
    client.hset(f"{prefix}user:plain", mapping={"password": "not-a-hash"})
    client.hset(f"{prefix}user:pull", mapping={"password": "plaintext"})
    assert await status(proxy, "plain", "not-a-hash") == 401
    assert await status(proxy, "pull", "pull-pw") == 200  # htpasswd is asked first


async def test_redis_away_degrades_and_never_opens(
    redis_server: RedisServer, make_proxy: ProxyFactory
) -> None:
    """Redis stopped: htpasswd users go on, Redis users get 503, the throttle counts locally,
    /health and the metric say degraded; back: everything as before."""
    prefix = f"t{secrets.token_hex(3)}:"
    port = free_port()
    extra = state_yaml(redis_server, prefix) + f"metrics:\n  listen: 127.0.0.1:{port}\n"
    proxy = await make_proxy(extra + "throttle:\n  attempts: 2\n")
    await passwd(redis_server, prefix, "bob", "--stdin", "--cost", "4", stdin="b-pw\n")
    await answers(proxy, "bob", "b-pw", 200)
    code, body = await scrape(port, "/health")
    assert (code, json.loads(body)["store"], json.loads(body)["status"]) == (200, "ok", "ok")
    redis_server.stop()

    async def degraded() -> bool:
        code, body = await scrape(port, "/health")
        return code == 200 and json.loads(body) == {
            "status": "degraded",
            "upstream": proxy.state.current.config.upstream,
            "store": "degraded",
        }

    await until(degraded)
    assert samples((await scrape(port))[1])[("regproxy_store_up", ())] == 0
    await answers(proxy, "bob", "b-pw", 503)  # cached, but no longer known to be current
    assert await status(proxy, "bob", "wrong") == 503
    assert await status(proxy, "pull", "pull-pw") == 200
    assert [await status(proxy, "other", "wrong") for _ in range(3)] == [401, 401, 429]
    redis_server.start()
    await answers(proxy, "bob", "b-pw", 200)
    await until(lambda: scrape_store(port, "ok"))
    assert samples((await scrape(port))[1])[("regproxy_store_up", ())] == 1


async def scrape_store(port: int, expected: str) -> bool:
    return json.loads((await scrape(port, "/health"))[1]).get("store") == expected


async def test_a_users_own_upstream_and_the_rules_upstream(
    redis_server: RedisServer, make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """Precedence: a rule's upstream, else the user's own (Redis), else `upstream:`."""
    own, team = FakeUpstream(), FakeUpstream()
    runners = [await serve_fake(fake) for fake in (own, team)]
    try:
        prefix = f"t{secrets.token_hex(3)}:"
        acl = (
            "acl:\n"
            f"  - repositories: ['team/**']\n    actions: [pull]\n    upstream: {team.url}\n"
            "  - actions: [pull]\n"
        )
        proxy = await make_proxy(state_yaml(redis_server, prefix) + acl)
        await passwd(redis_server, prefix, "carol", "--stdin", "--cost", "4", "--upstream", own.url,
               stdin="c-pw\n")  # fmt: skip
        await answers(proxy, "carol", "c-pw", 200)
        manifest = "/v2/{}/manifests/latest"
        assert await status(proxy, "carol", "c-pw", manifest.format("carol/app")) == 200
        assert await status(proxy, "carol", "c-pw", manifest.format("team/app")) == 200
        assert await status(proxy, "pull", "pull-pw", manifest.format("carol/app")) == 200
        # (Pings name no repository: the first rule for the user decides them, and routes.)
        assert manifests(own) == ["/v2/carol/app/manifests/latest"]
        assert manifests(team) == ["/v2/team/app/manifests/latest"]
        assert "/v2/carol/app/manifests/latest" in [r.path_qs for r in upstream.requests]
        await passwd(redis_server, prefix, "carol", "--stdin", "--cost", "4", "--upstream", "",
               stdin="c-pw\n")  # fmt: skip

        async def back_on_the_default() -> bool:
            await status(proxy, "carol", "c-pw", manifest.format("carol/back"))
            return "/v2/carol/back/manifests/latest" in [r.path_qs for r in upstream.requests]

        await until(back_on_the_default)
    finally:
        for runner in runners:
            await runner.cleanup()


def manifests(fake: FakeUpstream) -> list[str]:
    return [r.path_qs for r in fake.requests if "/manifests/" in r.path_qs]


async def serve_fake(fake: FakeUpstream) -> web.ServerRunner:
    runner = web.ServerRunner(web.Server(fake.handle))
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock).start()
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return runner


def cli(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return regproxy(*args, cwd=cwd, stdin=stdin)


async def test_passwd_in_redis_verifies_and_refuses_what_it_cannot_do(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = "cli:"
    await passwd(redis_server, prefix, "dave", "--stdin", "--cost", "4", "--groups", "ci, pusher",
           stdin="d-pw\n")  # fmt: skip
    fields = redis_server.client().hgetall(f"{prefix}user:dave")
    assert fields[b"groups"] == b"ci pusher" and fields[b"password"].startswith(b"$2y$04$")
    assert redis_server.client().get(f"{prefix}users:version") == b"1"
    base = ["passwd", "--redis", redis_server.url, "--key-prefix", prefix]
    ok = cli(*base, "dave", "--verify", "--stdin", cwd=tmp_path, stdin="d-pw\n")
    bad = cli(*base, "dave", "--verify", "--stdin", cwd=tmp_path, stdin="nope\n")
    assert (ok.returncode, bad.returncode) == (0, 3)
    missing = cli(*base, "nobody", "--delete", cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (1, "user 'nobody' not found in Redis\n")
    upstream = cli(*base, "dave", "--stdin", "--upstream", "ftp://x", cwd=tmp_path, stdin="p\n")
    assert upstream.returncode == 2 and "http:// or https://" in upstream.stderr
    assert cli("passwd", "--redis", "http://x", "u", cwd=tmp_path).returncode == 2
    assert cli("passwd", "htpasswd", "u", "--groups", "g", cwd=tmp_path).returncode == 2
    assert cli("passwd", "--redis", redis_server.url, "file", "u", cwd=tmp_path).returncode == 2
    (tmp_path / "local.yaml").write_text("workers: 1\n")
    no_state = cli("passwd", "--store", "-c", "local.yaml", "u", cwd=tmp_path)
    assert no_state.returncode == 1 and "no state: {backend: redis}" in no_state.stderr
    (tmp_path / "shared.yaml").write_text(
        f"state:\n  backend: redis\n  url: {redis_server.url}\n  key_prefix: '{prefix}'\n"
    )
    store = cli("passwd", "--store", "-c", "shared.yaml", "dave", "--delete", cwd=tmp_path)
    assert store.returncode == 0 and not redis_server.client().exists(f"{prefix}user:dave")
    redis_server.stop()
    down = cli(*base, "erin", "--stdin", cwd=tmp_path, stdin="e-pw\n")
    assert down.returncode == 1 and f"Redis at redis://127.0.0.1:{redis_server.port}" in down.stderr
