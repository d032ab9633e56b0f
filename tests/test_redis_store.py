"""Replicas sharing state through a real redis-server (proxy.state.redis_store), in one
process: each `Replica` (tests/stores.py) a RedisStore with its own origin, feeding its own
throttle as a server does. Redis stopped and restarted mid-test: the stores degrade,
reconnect and catch up."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.state.events import BlobGone, LoginFailed, LoginSucceeded, encode
from proxy.state.redis_layout import Keys, entry
from proxy.state.redis_store import RedisStore
from proxy.state.store import LocalStore, LockTimeout, StateSettings, StoreUnavailable
from tests.conftest import Mesh, until
from tests.redis_server import RedisServer
from tests.stores import SETTINGS, Replica, fail, locked, start_replica

BOUND = 10.0  # seconds: only stops a broken run from hanging


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the tests that do not stop it; each test has its own key prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may stop and restart."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


ReplicaFactory = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replicas(shared_redis: RedisServer) -> AsyncIterator[ReplicaFactory]:
    """`await replicas()` -> a started replica; they share a key prefix of this test's own."""
    started: list[Replica] = []
    prefix = f"test-{secrets.token_hex(4)}:"

    async def start(
        server: RedisServer | None = None,
        origin: bytes | None = None,
        local: LocalStore | None = None,
    ) -> Replica:
        settings = StateSettings("redis", (server or shared_redis).url, prefix, timeout=0.5)
        replica = await start_replica(settings, origin, local)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.store.close()


async def test_failures_spread_over_replicas_count_in_every_one(replicas: ReplicaFactory) -> None:
    a, b, c = await replicas(), await replicas(), await replicas()
    fail(a, "alice", "192.0.2.7")
    fail(b, "alice", "192.0.2.7")
    fail(c, "alice", "192.0.2.7")
    assert not locked(a, "alice", "192.0.2.7")  # 3 of 4, wherever they land
    fail(a, "alice", "192.0.2.7")
    for replica in (a, b, c):
        await until(lambda r=replica: locked(r, "alice", "192.0.2.7"))  # type: ignore[misc]
    assert not locked(b, "alice", "192.0.2.8")


async def test_attempts_under_way_are_counted_in_redis_with_the_failures_before_them(
    replicas: ReplicaFactory,
) -> None:
    """Every replica counts a (user, address)'s attempts under way in one place; one that
    lets go after its failure is published leaves that failure counted for whoever counts
    next, in the same round trip."""
    a, b = await replicas(), await replicas()
    key = "192.0.2.9\0mallory"
    assert (await a.store.reserve(key, b"guess-1", 60))[0] == 1
    count, let_go = await b.store.reserve(key, b"guess-2", 60)
    assert count == 2
    assert (await b.store.reserve(key, b"guess-2", 60))[0] == 2  # the same attempt: once
    b.store.publish(LoginFailed("mallory", "192.0.2.9"))
    let_go()
    await b.store.flush()
    count, _ = await a.store.reserve(key, b"guess-3", 60)
    assert count == 2  # guess-1 and guess-3 under way; guess-2 let go ...
    assert a.received(LoginFailed("mallory", "192.0.2.9")) == 1  # ... and its failure is here


async def test_attempts_under_way_are_counted_on_this_machine_while_redis_is_away(
    replicas: ReplicaFactory, own_redis: RedisServer
) -> None:
    a = await replicas(own_redis)
    own_redis.stop()
    await until(lambda: not a.store.healthy)
    first, let_go = await a.store.reserve("k", b"1", 60)
    assert (first, (await a.store.reserve("k", b"2", 60))[0]) == (1, 2)
    let_go()
    assert (await a.store.reserve("k", b"3", 60))[0] == 2


async def test_a_replica_ignores_its_own_events(replicas: ReplicaFactory) -> None:
    a, b = await replicas(), await replicas()
    fail(a, "bob", "192.0.2.1")
    b.store.publish(BlobGone("marker"))  # after a's failure in the stream
    await until(lambda: a.received(BlobGone("marker")) == 1)
    assert a.received(LoginFailed("bob", "192.0.2.1")) == 0
    await until(lambda: b.received(LoginFailed("bob", "192.0.2.1")) == 1)
    assert all(0 <= age < BOUND for _, age in a.seen + b.seen)


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    """Two workers' mesh (closed after the replicas using it)."""
    made = Mesh(2)
    yield made
    made.close()


async def test_workers_of_one_replica_hear_each_other_once(
    mesh: Mesh, replicas: ReplicaFactory
) -> None:
    """Two workers (one origin, joined by the mesh) and another replica: each event is
    applied once everywhere: through the mesh in the sibling, through Redis elsewhere."""
    origin = b"machine-one"
    first = await replicas(origin=origin, local=LocalStore(mesh.peers(0)))
    second = await replicas(origin=origin, local=LocalStore(mesh.peers(1)))
    other = await replicas()
    fail(first, "carol", "192.0.2.2")
    await until(lambda: other.received(LoginFailed("carol", "192.0.2.2")) == 1)
    other.store.publish(BlobGone("marker"))
    await until(lambda: second.received(BlobGone("marker")) == 1)
    assert second.received(LoginFailed("carol", "192.0.2.2")) == 1  # the mesh's copy


async def test_a_new_replica_starts_with_the_history(
    replicas: ReplicaFactory, shared_redis: RedisServer
) -> None:
    a = await replicas()
    for _ in range(SETTINGS.attempts):
        fail(a, "dave", "198.51.100.4")
    a.throttle.success("erin", "198.51.100.5")
    keys = Keys(a.store.keys.prefix)
    client = shared_redis.client()
    await until(lambda: client.xlen(keys.events) == SETTINGS.attempts + 1)
    late = await replicas()  # no waiting: start() replayed what is in Redis
    assert locked(late, "dave", "198.51.100.4")
    assert late.throttle.known_good("erin", "198.51.100.5")
    assert all(0 <= age < BOUND for _, age in late.seen)


async def test_history_keeps_its_age_and_its_limit(
    replicas: ReplicaFactory, shared_redis: RedisServer
) -> None:
    """Failures replayed at start count from when they happened: a lockout that has ended
    stays ended, and what is older than the throttle's memory is not even read."""
    prefix = (await replicas()).store.keys.prefix
    keys, client = Keys(prefix), shared_redis.client()
    seconds, _ = client.time()
    now_ms = seconds * 1000
    written = {  # oldest first: a stream's ids only grow
        "gina": now_ms - 1_000_000,  # outside window + max_delay: never read
        "frank": now_ms - 30_000,  # 30 s ago: counted, its 1 s lockout long over
    }
    for user, at in written.items():
        for n in range(SETTINGS.attempts):
            fields: Any = entry(b"elsewhere", LoginFailed(user, "203.0.113.9"), 0)
            client.xadd(keys.events, fields, id=f"{at}-{n}")
    late = await replicas()
    ages = [age for event, age in late.seen if isinstance(event, LoginFailed)]
    assert len(ages) == SETTINGS.attempts and all(29 < age < 29 + BOUND for age in ages)
    assert not locked(late, "frank", "203.0.113.9")
    fail(late, "frank", "203.0.113.9")  # the fifth within the window: locked again
    assert locked(late, "frank", "203.0.113.9")
    fail(late, "gina", "203.0.113.9")
    assert not locked(late, "gina", "203.0.113.9")


async def test_known_good_pairs_outlive_the_event_stream(
    replicas: ReplicaFactory, shared_redis: RedisServer
) -> None:
    a = await replicas()
    a.throttle.success("hana", "2001:db8::1")
    keys, client = Keys(a.store.keys.prefix), shared_redis.client()
    member = encode(LoginSucceeded("hana", "2001:db8::1"))
    await until(lambda: client.zscore(keys.known_good, member) is not None)
    client.delete(keys.events)  # trimmed away long ago
    late = await replicas()
    assert late.throttle.known_good("hana", "2001:db8::1")


async def test_a_blob_deletion_reaches_every_replica(replicas: ReplicaFactory) -> None:
    a, b, c = await replicas(), await replicas(), await replicas()
    gone = BlobGone("http://registry:5000/v2/app/blobs/sha256:" + "1" * 64)
    a.store.publish(gone)
    await until(lambda: b.received(gone) == c.received(gone) == 1)


async def test_a_lock_is_exclusive_across_replicas(replicas: ReplicaFactory) -> None:
    a, b = await replicas(), await replicas()
    order: list[str] = []

    async def second() -> None:
        async with b.store.lock("tag/app:v1", ttl=30, wait=BOUND):
            order.append("b")

    async with a.store.lock("tag/app:v1", ttl=30, wait=1):
        waiting = asyncio.ensure_future(second())
        with pytest.raises(LockTimeout):
            async with b.store.lock("tag/app:v1", ttl=30, wait=0.05):
                pass
        order.append("a")
    await waiting
    assert order == ["a", "b"]
    async with a.store.lock("tag/app:v1", ttl=30, wait=0.05):
        pass  # released


async def test_an_expired_lock_is_never_released_by_its_old_holder(
    replicas: ReplicaFactory, shared_redis: RedisServer
) -> None:
    a, b = await replicas(), await replicas()
    key = Keys(a.store.keys.prefix).lock("slow")
    client = shared_redis.client()
    async with a.store.lock("slow", ttl=0.05, wait=1):
        await until(lambda: not client.exists(key))  # a held it past its ttl
        async with b.store.lock("slow", ttl=30, wait=1):
            taken = client.get(key)
    assert taken is not None
    async with b.store.lock("slow", ttl=30, wait=1):
        async with a.store.lock("other", ttl=1, wait=1):
            pass
        assert client.get(key) is not None  # a's exit above did not touch b's lock


async def test_redis_away_then_back(
    replicas: ReplicaFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped mid-test: the replicas go on alone (publishing never fails, locks are refused,
    one warning each), reconnect once it is back, and what was published meanwhile arrives
    with its age; nothing published before is applied twice."""
    caplog.set_level(logging.WARNING, "regproxy.store")
    a, b = await replicas(own_redis), await replicas(own_redis)
    fail(a, "ivan", "192.0.2.3")
    await until(lambda: b.received(LoginFailed("ivan", "192.0.2.3")) == 1)
    attempts = count_reconnections(b.store)
    own_redis.stop()
    await until(lambda: not a.store.healthy and not b.store.healthy)
    fail(a, "ivan", "192.0.2.3")  # counted here, kept for the others
    a.store.publish(BlobGone("while-away"))
    with pytest.raises(StoreUnavailable):
        async with a.store.lock("x", ttl=1, wait=1):
            pass
    await until(lambda: attempts[0] >= 3)  # b tried again and again
    own_redis.start()
    await until(lambda: a.store.healthy and b.store.healthy)
    await until(lambda: b.received(BlobGone("while-away")) == 1)
    assert b.received(LoginFailed("ivan", "192.0.2.3")) == 2
    waited = [age for event, age in b.seen if event == BlobGone("while-away")]
    assert waited[0] > 0
    for store in (a.store, b.store):
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert sum(1 for r in warnings if store._where in r.getMessage()) >= 1
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 2  # once per replica, however many reconnection attempts


def count_reconnections(store: RedisStore) -> list[int]:
    """Count the store's reconnection attempts (each starts with TIME)."""
    calls = [0]
    reader = store._reader
    original = reader.time

    async def counted() -> Any:
        calls[0] += 1
        return await original()

    reader.time = counted  # type: ignore[method-assign]
    return calls


async def test_a_replica_starts_while_redis_is_away_and_catches_up(
    replicas: ReplicaFactory, own_redis: RedisServer
) -> None:
    a = await replicas(own_redis)
    for _ in range(SETTINGS.attempts):
        fail(a, "judy", "192.0.2.4")
    keys, client = Keys(a.store.keys.prefix), own_redis.client()
    await until(lambda: client.xlen(keys.events) == SETTINGS.attempts)
    own_redis.stop()
    late = await replicas(own_redis)  # starts (with local state only) rather than waiting
    assert not late.store.healthy and not locked(late, "judy", "192.0.2.4")
    own_redis.start()
    await until(lambda: locked(late, "judy", "192.0.2.4"))


async def test_flush_returns_once_the_news_is_in_redis(
    replicas: ReplicaFactory, shared_redis: RedisServer
) -> None:
    """What a failed login's 401 waits for: the failure is in the stream when it returns."""
    a = await replicas()
    keys, client = Keys(a.store.keys.prefix), shared_redis.client()
    await a.store.flush()  # nothing published: returns at once
    for n in range(1, 4):
        fail(a, "kim", "192.0.2.5")
        await a.store.flush()
        assert client.xlen(keys.events) == n


async def test_a_reader_ahead_of_the_stream_it_reconnects_to_resumes_at_its_end(
    replicas: ReplicaFactory, own_redis: RedisServer
) -> None:
    """After a failover the new primary may lack the last entries a reader saw on the old one
    (and its clock may be behind): the reader must not wait for ids past the old position.
    Here: an entry an hour ahead is read, the stream is lost, the connections are cut."""
    a, b = await replicas(own_redis), await replicas(own_redis)
    keys, client = Keys(a.store.keys.prefix), own_redis.client()
    seconds, _ = client.time()
    ahead = f"{(seconds + 3600) * 1000}-0"
    fields: Any = entry(b"elsewhere", BlobGone("from the future"), 0)
    client.xadd(keys.events, fields, id=ahead)
    await until(lambda: a.received(BlobGone("from the future")) == 1)
    client.delete(keys.events)
    attempts = count_reconnections(a.store)
    client.client_kill_filter(_type="normal", skipme=True)  # as when the old primary dies
    await until(lambda: attempts[0] >= 1 and a.store.healthy)
    b.store.publish(BlobGone("now"))
    await until(lambda: a.received(BlobGone("now")) == 1)
