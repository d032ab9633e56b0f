"""Replicas sharing state through a Redis Sentinel deployment (tests/redis_sentinel.py: Debian's
redis-server and redis-sentinel, one primary, one replica, three sentinels), in one process:
each replica a RedisStore with its own origin (tests/stores.py). The primary
is killed; the stores follow the sentinels to the new one."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.tls import make_tls
from proxy.state.events import BlobGone, Event, LoginFailed, decode
from proxy.state.redis_layout import SENTINEL_BACKOFF_CAP, Keys
from proxy.state.store import LockTimeout, StateSettings, StoreUnavailable
from tests.conftest import until
from tests.redis_sentinel import SERVICE, SentinelDeployment
from tests.stores import Replica, fail, start_replica

REDIS_PASSWORD, SENTINEL_PASSWORD = "redis-secret", "sentinel-secret"
ADDRESS = "192.0.2.9"
BOUND = 30.0  # seconds: only stops a broken run from hanging


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelDeployment]:
    """The deployment: over TLS (sentinels and Redis) when the test asks for "tls"."""
    tls = make_tls(tmp_path / "tls") if getattr(request, "param", "plain") == "tls" else None
    with SentinelDeployment(tmp_path / "redis", REDIS_PASSWORD, SENTINEL_PASSWORD, tls) as running:
        yield running


ReplicaFactory = Callable[[], Awaitable[Replica]]


def sentinel_settings(deployment: SentinelDeployment, prefix: str) -> StateSettings:
    addresses = tuple(("127.0.0.1", sentinel.port) for sentinel in deployment.sentinels)
    tls = deployment.primary.tls
    return StateSettings(
        "redis", None, prefix, password=REDIS_PASSWORD, sentinels=addresses, service=SERVICE,
        sentinel_password=SENTINEL_PASSWORD, sentinel_tls=tls is not None,
        ca_file=tls.ca_cert if tls else None,
    )  # fmt: skip


@pytest.fixture
async def replicas(deployment: SentinelDeployment) -> AsyncIterator[ReplicaFactory]:
    started: list[Replica] = []
    settings = sentinel_settings(deployment, f"test-{secrets.token_hex(4)}:")

    async def start() -> Replica:
        started.append(await start_replica(settings))
        return started[-1]

    yield start
    for replica in started:
        await replica.store.close()


def seen(replica: Replica) -> list[Event]:
    return [event for event, _ in replica.seen]


def in_stream(deployment: SentinelDeployment, prefix: str) -> list[Event | None]:
    """The events in the stream of the server the sentinels name primary now."""
    client = deployment.primary.client()
    return [decode(fields[b"e"]) for _, fields in client.xrange(Keys(prefix).events)]


@pytest.mark.parametrize("deployment", ["plain", "tls"], indirect=True)
async def test_stores_follow_a_failover_and_lose_nothing_acknowledged(
    replicas: ReplicaFactory, deployment: SentinelDeployment, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: events and locks shared through the primary. The primary killed: both stores
    degrade, locks are refused, what is published waits. Once the sentinels name the replica,
    both write there within SENTINEL_BACKOFF_CAP plus a connection; every event whose flush
    returned (a 401 waits for it) is in the new primary's stream, and so is what waited.
    Over TLS too: to the sentinels and to Redis, verified against the deployment's CA."""
    caplog.set_level(logging.WARNING, "regproxy.store")
    a, b = await replicas(), await replicas()
    prefix = a.store.keys.prefix
    acknowledged = [LoginFailed(f"user{n}", ADDRESS) for n in range(3)]
    for event in acknowledged:
        fail(a, event.user, ADDRESS)
        await a.store.flush()
    await until(lambda: all(event in seen(b) for event in acknowledged), BOUND)
    async with a.store.lock("tag/app:v1", ttl=30, wait=1):
        with pytest.raises(LockTimeout):
            async with b.store.lock("tag/app:v1", ttl=30, wait=0.05):
                pass

    # No wait after the last flush; the failover takes seconds, the stores notice at once.
    killing = asyncio.ensure_future(asyncio.to_thread(deployment.kill_primary))
    await until(lambda: not a.store.healthy and not b.store.healthy, BOUND)
    fail(b, "during", ADDRESS)  # kept for the new primary
    with pytest.raises(StoreUnavailable):
        async with a.store.lock("tag/app:v2", ttl=30, wait=1):
            pass

    async def healthy_again() -> float:
        await until(lambda: a.store.healthy and b.store.healthy, BOUND)
        return time.monotonic()

    back = asyncio.ensure_future(healthy_again())
    failover = await killing
    recovered = await back - failover.switched_at
    bound = SENTINEL_BACKOFF_CAP + StateSettings().connect_timeout  # README "Redis Sentinel"
    print(f"failover {failover.switched_at - failover.killed_at:.2f}s after the kill; "
          f"both stores healthy {recovered:.2f}s later (bound {bound}s)")  # fmt: skip
    assert recovered <= bound

    await until(lambda: LoginFailed("during", ADDRESS) in seen(a), BOUND)
    written = in_stream(deployment, prefix)
    assert all(event in written for event in acknowledged)
    assert LoginFailed("during", ADDRESS) in written
    a.store.publish(BlobGone("after"))
    await until(lambda: BlobGone("after") in seen(b), BOUND)
    async with b.store.lock("tag/app:v1", ttl=30, wait=1):  # a's lock went with the old primary
        with pytest.raises(LockTimeout):
            async with a.store.lock("tag/app:v1", ttl=30, wait=0.05):
                pass
    said = " ".join(record.getMessage() for record in caplog.records)
    assert f"(primary 127.0.0.1:{failover.new_primary.port})" in said


async def test_without_a_replica_writes_go_on_and_say_they_are_unconfirmed(
    replicas: ReplicaFactory, deployment: SentinelDeployment, caplog: pytest.LogCaptureFixture
) -> None:
    """WAIT finds no replica: the event still goes to the primary (and the flush returns
    within the time a write has), with one warning; once the replica is back, one more."""
    caplog.set_level(logging.WARNING, "regproxy.store")
    a = await replicas()
    deployment.replica.stop()
    started = time.monotonic()
    fail(a, "alone", ADDRESS)
    await a.store.flush()
    assert time.monotonic() - started < BOUND
    await until(lambda: "no replica confirmed" in caplog.text, BOUND)
    assert LoginFailed("alone", ADDRESS) in in_stream(deployment, a.store.keys.prefix)
    assert a.store.healthy
    deployment.replica.start()

    def confirmed() -> bool:
        fail(a, "again", ADDRESS)  # one more write: WAIT asks again
        return "a replica confirms writes again" in caplog.text

    await until(confirmed, BOUND)


async def test_a_reply_held_by_wait_may_be_read_a_whole_command_timeout_later(
    deployment: SentinelDeployment, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a replica, WAIT holds every batch's reply for half of `state.timeout`; a busy
    event loop then reads it late. That is not Redis away: the store stays up, and a flush
    (what a failed login's 401 waits for) returns once the batch's reply is read."""
    caplog.set_level(logging.WARNING, "regproxy.store")
    settings = replace(sentinel_settings(deployment, f"test-{secrets.token_hex(4)}:"), timeout=4)
    a = await start_replica(settings)
    try:
        fail(a, "before", ADDRESS)  # the writer's connection opened, and confirmed, beforehand
        await a.store.flush()
        deployment.replica.stop()
        # WAIT answers after 2 s; the loop, busy from 1 s to 4.5 s, reads that past one command
        # timeout (4 s) from when it began to wait, within the 6 s a write has. (The stream's
        # reader, whose XREAD BLOCK of 1 s has 5 s, reads in time whenever it began.)
        asyncio.get_running_loop().call_later(1.0, time.sleep, 3.5)
        fail(a, "slow", ADDRESS)
        await a.store.flush()
        assert "no replica confirmed" in caplog.text  # WAIT's answer, read before the flush ended
        assert "unreachable" not in caplog.text
        assert a.store.healthy
        assert LoginFailed("slow", ADDRESS) in in_stream(deployment, a.store.keys.prefix)
    finally:
        await a.store.close()
