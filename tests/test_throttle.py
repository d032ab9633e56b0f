"""The throttle through the real request path, keyed by who fails: distinct loopback source
addresses (127.0.0.2, 127.0.0.3, ...) stand for distinct clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.conftest import USERS, ProxyFactory, RunningProxy, TlsPair, basic, htpasswd_text

Client = Callable[[str, str, str], Awaitable[int]]


@pytest.fixture
async def from_address(tls: TlsPair) -> AsyncIterator[Callable[[RunningProxy], Client]]:
    """`client(proxy)(address, user, password)` -> the status of `GET /v2/` from `address`."""
    sessions: dict[str, aiohttp.ClientSession] = {}

    def bind(proxy: RunningProxy) -> Client:
        async def get(address: str, user: str, password: str) -> int:
            if address not in sessions:
                connector = aiohttp.TCPConnector(ssl=tls.client_context(), local_addr=(address, 0))
                sessions[address] = aiohttp.ClientSession(connector=connector)
            headers = {"Authorization": basic(user, password)}
            async with sessions[address].get(proxy.url + "/v2/", headers=headers) as resp:
                return resp.status

        return get

    yield bind
    for session in sessions.values():
        await session.close()


async def test_one_users_failures_do_not_lock_out_others_at_the_same_address(
    make_proxy: ProxyFactory, from_address: Callable[[RunningProxy], Client]
) -> None:
    get = from_address(await make_proxy("throttle:\n  attempts: 5\n"))
    for _ in range(5):  # a CI job with a stale secret
        assert await get("127.0.0.2", "push", "stale") == 401
    assert await get("127.0.0.2", "push", USERS["push"]) == 429  # no oracle: even the right one
    assert await get("127.0.0.2", "pull", USERS["pull"]) == 200  # a colleague at that address
    assert await get("127.0.0.2", "other", USERS["other"]) == 200
    assert await get("127.0.0.3", "push", USERS["push"]) == 200  # the user elsewhere


async def test_token_shaped_passwords_count_against_the_user_without_a_token_backend(
    make_proxy: ProxyFactory, from_address: Callable[[RunningProxy], Client]
) -> None:
    """Only what a token backend takes is counted per token: without one (no `oidc:`), a
    password shaped like a JWT goes to the password backends and counts against its user."""
    get = from_address(await make_proxy("throttle:\n  attempts: 5\n"))
    for n in range(5):
        assert await get("127.0.0.6", "push", f"eyGuess{n}.a.b") == 401
    assert await get("127.0.0.6", "push", USERS["push"]) == 429


async def test_spraying_one_address_locks_strangers_but_not_its_known_users(
    make_proxy: ProxyFactory, from_address: Callable[[RunningProxy], Client]
) -> None:
    get = from_address(await make_proxy("throttle:\n  attempts: 2\n"))
    assert await get("127.0.0.4", "pull", USERS["pull"]) == 200  # pull works from here
    for n in range(8):  # 4 x attempts distinct user names
        assert await get("127.0.0.4", f"victim{n}", "guess") == 401
    assert await get("127.0.0.4", "other", USERS["other"]) == 429  # never logged in from here
    assert await get("127.0.0.4", "pull", USERS["pull"]) == 200  # known good here
    assert await get("127.0.0.5", "other", USERS["other"]) == 200


async def test_a_user_attacked_from_everywhere_keeps_working_where_they_logged_in(
    make_proxy: ProxyFactory, from_address: Callable[[RunningProxy], Client]
) -> None:
    get = from_address(await make_proxy("throttle:\n  attempts: 2\n"))
    assert await get("127.0.0.6", "push", USERS["push"]) == 200
    for n in range(8):  # 4 x attempts failures, one per address
        assert await get(f"127.0.1.{n + 1}", "push", "guess") == 401
    assert await get("127.0.2.1", "push", USERS["push"]) == 429  # a new address: locked
    assert await get("127.0.0.6", "push", USERS["push"]) == 200  # the real user: not


async def test_a_storm_of_correct_logins_from_one_address_is_never_throttled(
    make_proxy: ProxyFactory, from_address: Callable[[RunningProxy], Client]
) -> None:
    """64 CI runners behind one address, each its own user, cold credential caches, all at
    once: nobody gets 429 (docker does not retry it); guessing from there still does."""
    import asyncio

    proxy = await make_proxy("throttle:\n  attempts: 3\n")
    runners = {f"runner{n}": f"pw-{n}" for n in range(64)}
    proxy.htpasswd.write_text(htpasswd_text({**USERS, **runners}))
    assert await proxy.state.reload("test")
    get = from_address(proxy)
    statuses = await asyncio.gather(*(get("127.0.0.7", u, pw) for u, pw in runners.items()))
    assert statuses == [200] * 64
    for n in range(3):
        assert await get("127.0.0.7", "runner0", f"guess{n}") == 401
    assert await get("127.0.0.7", "runner0", "guess-again") == 429
