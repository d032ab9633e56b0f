"""The local store (proxy.state.store): two workers' throttles and caches joined by a real datagram
mesh (proxy.state.peers), in one process; named locks over shared lock files."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.authn.cache import CacheSettings
from proxy.authn.throttle import Throttle, ThrottleSettings
from proxy.state import peers
from proxy.state.events import BlobGone, Counted, Event, LoginFailed, decode
from proxy.state.peers import Peers
from proxy.state.store import LocalStore, LockTimeout
from tests.conftest import Mesh, until

SETTINGS = ThrottleSettings(attempts=4, window=300.0, max_delay=900.0)
NOW = 1000.0


@dataclass
class Worker:
    store: LocalStore
    throttle: Throttle
    seen: list[Event]


@pytest.fixture
def pair() -> Iterator[tuple[Worker, Worker]]:
    """Two workers joined by a real datagram mesh, each applying what the other publishes."""
    mesh = Mesh(2)
    workers = []
    for index in range(2):
        store = LocalStore(mesh.peers(index))
        throttle = Throttle(store.publish)
        seen: list[Event] = []
        store.subscribe(lambda event, _age, seen=seen: seen.append(event))
        store.subscribe(lambda event, age, t=throttle: t.apply(event, NOW - age, SETTINGS))
        workers.append(Worker(store, throttle, seen))
    yield workers[0], workers[1]
    mesh.close()


def test_failures_seen_by_either_worker_count_in_both(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    for worker in (a, b, a):  # three failures, spread over the two workers
        worker.throttle.failure("alice", "192.0.2.7", NOW, SETTINGS)
    assert (a.store.deliver(), b.store.deliver()) == (1, 2)
    assert a.throttle.retry_after("alice", "192.0.2.7", NOW, SETTINGS) == 0  # 3 of 4
    b.throttle.failure("alice", "192.0.2.7", NOW, SETTINGS)  # the fourth, in the other worker
    assert a.store.deliver() == 1
    assert a.throttle.retry_after("alice", "192.0.2.7", NOW, SETTINGS) > 0
    assert b.throttle.retry_after("alice", "192.0.2.7", NOW, SETTINGS) > 0
    assert a.throttle.retry_after("alice", "192.0.2.8", NOW, SETTINGS) == 0


def test_alone_each_worker_would_have_allowed_more(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    for worker in (a, b, a, b):
        worker.throttle.failure("bob", "192.0.2.9", NOW, SETTINGS)
    # Before the events are read each worker has counted only its own two failures.
    assert a.throttle.retry_after("bob", "192.0.2.9", NOW, SETTINGS) == 0
    a.store.sync()
    assert a.throttle.retry_after("bob", "192.0.2.9", NOW, SETTINGS) > 0


def test_a_login_in_one_worker_exempts_that_address_in_the_other(
    pair: tuple[Worker, Worker],
) -> None:
    a, b = pair
    a.throttle.success("carol", "198.51.100.1")
    for n in range(4 * SETTINGS.attempts):  # a guesser spread over many addresses
        a.throttle.failure("carol", f"203.0.113.{n}", NOW, SETTINGS)
    b.store.deliver()
    assert b.throttle.retry_after("carol", "203.0.113.200", NOW, SETTINGS) > 0
    assert b.throttle.retry_after("carol", "198.51.100.1", NOW, SETTINGS) == 0


def test_received_events_are_not_sent_on(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    a.throttle.failure("dave", "192.0.2.1", NOW, SETTINGS)
    assert b.store.deliver() == 1
    assert a.store.deliver() == 0  # b applied it without telling a again
    assert b.store.deliver() == 0


def test_only_a_new_login_address_is_sent(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    for _ in range(3):  # a client's requests: each one is a successful login
        a.throttle.success("erin", "192.0.2.5")
    a.throttle.success("erin", "192.0.2.6")
    assert b.store.deliver() == 2
    assert b.throttle.known_good("erin", "192.0.2.5")
    assert b.throttle.known_good("erin", "192.0.2.6")


def test_other_events_reach_every_subscriber(pair: tuple[Worker, Worker]) -> None:
    a, b = pair
    a.store.publish(BlobGone("http://r/v2/x/blobs/sha256:1"))
    b.store.sync()
    assert b.seen == [BlobGone("http://r/v2/x/blobs/sha256:1")]
    assert a.seen == []  # a process does not hear itself


def test_a_count_is_told_as_it_is_made(pair: tuple[Worker, Worker]) -> None:
    """No loop turn between one worker counting and the other knowing: none runs here."""
    a, b = pair
    a.store.count("u:alice:manifest_pulls", 2000, 1)
    b.store.count("u:alice:manifest_pulls", 2000, 1)
    a.store.count("u:alice:manifest_pulls", 2000, -1)  # given back
    a.store.count("u:alice:manifest_pulls", 2000, 0)  # nothing: nothing to tell
    assert (a.store.used("u:alice:manifest_pulls", 2000), b.store.deliver()) == (0, 2)
    a.store.sync()
    assert a.store.used("u:alice:manifest_pulls", 2000) == 1
    assert b.store.used("u:alice:manifest_pulls", 2000) == 1
    assert b.store.used("u:alice:manifest_pulls", 3000) == 0  # another window


def test_asking_and_counting_leave_nothing_for_a_sync(pair: tuple[Worker, Worker]) -> None:
    """The mesh never syncs: an entry marked for one would be kept forever."""
    a, _ = pair
    a.store.count("u:alice:manifest_pulls", 2000, 1)
    a.store.used("u:bob:manifest_pulls", 2000)
    assert a.store._counts._tally.outgoing(now=0) == []


def fill(sender: Peers, tell: Callable[[int], None]) -> int:
    """`tell(n)` for n = 0, 1, ... until the inbox refuses: how many were told."""
    told = 0
    while not sender.waiting:
        tell(told)
        told += 1
    return told


def test_what_a_full_inbox_refuses_is_sent_again_counts_added_up() -> None:
    """Kept while the inbox is full: other events in order, counts one datagram per key and
    window however many were told (a worker that catches up reads a few, not thousands)."""
    mesh = Mesh(2)
    sender, receiver = mesh.peers(0), mesh.peers(1)
    told = fill(sender, lambda n: sender.send(BlobGone(f"filler{n}")))
    for n in range(500):
        sender.send(Counted("u:alice:manifest_pulls", "2000", "1"))
        sender.send(Counted("u:bob:manifest_pulls", "2000", "1" if n % 2 else "-1"))
    for n in range(3):
        sender.send(BlobGone(f"k{n}"))
    assert len(receiver.receive()) == told - 1  # read: room again
    assert sender.flush() and not sender.waiting
    assert [decode(d) for d in receiver.receive()] == [
        Counted("u:alice:manifest_pulls", "2000", "500"),  # bob's add up to nothing: not sent
        BlobGone(f"filler{told - 1}"), *(BlobGone(f"k{n}") for n in range(3)),
    ]  # fmt: skip
    assert not sender.flush()  # nothing left to send
    mesh.close()


def test_past_the_backlog_what_is_told_is_lost_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(peers, "BACKLOG", 4)
    mesh = Mesh(2)
    sender, receiver = mesh.peers(0), mesh.peers(1)
    told = fill(sender, lambda n: sender.send(BlobGone(f"filler{n}")))
    for n in range(10):  # 4 events and 4 keys' counts kept, the rest lost
        sender.send(BlobGone(f"k{n}"))
        sender.send(Counted(f"key{n}", "2000", "1"))
    warnings = [r.getMessage() for r in caplog.records if "is lost" in r.getMessage()]
    assert warnings == ["worker mesh: a worker has read nothing while 4 events were told to "
                        "it; what it is told now is lost"]  # fmt: skip
    receiver.receive()
    assert sender.flush() and not sender.waiting
    arrived = [decode(d) for d in receiver.receive()]
    assert sorted(arrived[:4], key=repr) == [Counted(f"key{n}", "2000", "1") for n in range(4)]
    assert arrived[4:] == [BlobGone(f"filler{told - 1}"), *(BlobGone(f"k{n}") for n in range(3))]
    mesh.close()


async def test_a_stalled_worker_gets_the_counts_it_refused_once_it_reads() -> None:
    mesh = Mesh(2)
    sender = mesh.peers(0)
    a, b = LocalStore(sender), LocalStore(mesh.peers(1))
    await a.start()  # b's loop "stalls": never started, it reads only when asked
    told = fill(sender, lambda _: a.count("u:alice:manifest_pulls", 2000, 1))
    for _ in range(1000):  # more while b stalls: kept as one count
        a.count("u:alice:manifest_pulls", 2000, 1)
    assert b.deliver() == told - 1  # the last one was refused; a's loop sends it again

    def heard_all() -> bool:
        b.deliver()
        return b.used("u:alice:manifest_pulls", 2000) == told + 1000

    await until(heard_all)
    assert not sender.waiting
    await a.close()
    mesh.close()


async def test_sending_again_to_an_inbox_nobody_reads_backs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker gone until it is restarted: tried at most every MESH_RETRY_MOST seconds; and
    what a full inbox refused before the store started is tried once it has."""
    mesh = Mesh(2)
    sender = mesh.peers(0)
    a = LocalStore(sender)
    fill(sender, lambda n: a.publish(BlobGone(f"filler{n}")))  # before start: no loop yet
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    schedule = loop.call_later

    def recorded(
        delay: float, callback: Callable[..., object], *args: object
    ) -> asyncio.TimerHandle:
        delays.append(delay)
        return schedule(delay, callback, *args)

    monkeypatch.setattr(loop, "call_later", recorded)
    await a.start()
    assert delays == [0.005]
    for delay in (0.005, 0.01, 0.02, 0.04, 0.08, 0.1):
        assert a._retry is not None
        a._retry.cancel()
        a._retry = None
        a._send_again(delay)  # nothing goes: the next try waits twice as long, at most 0.1 s
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    mesh.peers(1).receive()
    await until(lambda: not sender.waiting)  # read again: the next try sends the rest
    await a.close()
    mesh.close()


def test_a_store_without_peers_is_alone() -> None:
    store = LocalStore()
    store.publish(BlobGone("k"))
    assert store.deliver() == 0


async def test_a_lock_is_exclusive_across_stores_sharing_a_directory(tmp_path: Path) -> None:
    """Two workers' stores: while one holds a name, the other waits, then gets it."""
    import asyncio

    first, second = LocalStore(lock_dir=tmp_path), LocalStore(lock_dir=tmp_path)
    order: list[str] = []
    async with first.lock("push/app:v1", ttl=30, wait=5):
        waiting = asyncio.ensure_future(_hold(second, "push/app:v1", order))
        await asyncio.sleep(0.05)  # the other store is polling for the file lock by now
        order.append("first done")
    await waiting
    assert order == ["first done", "second"]


async def _hold(store: LocalStore, name: str, order: list[str]) -> None:
    async with store.lock(name, ttl=30, wait=5):
        order.append("second")


async def test_a_lock_held_too_long_times_out_the_waiter(tmp_path: Path) -> None:
    first, second = LocalStore(lock_dir=tmp_path), LocalStore(lock_dir=tmp_path)
    async with first.lock("x", ttl=30, wait=5):
        with pytest.raises(LockTimeout):
            async with second.lock("x", ttl=30, wait=0.1):
                pass
        with pytest.raises(LockTimeout):  # within one process too
            async with first.lock("x", ttl=30, wait=0.1):
                pass
    async with second.lock("x", ttl=30, wait=1):
        pass  # released: free again


async def test_different_names_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """Across processes too: no two names share a lock file (#23 finding 4), and a name's
    file is gone once its lock is let go, so they never pile up."""
    store = LocalStore()
    async with store.lock("a", ttl=30, wait=1), store.lock("b", ttl=30, wait=0.1):
        pass
    first, second = LocalStore(lock_dir=tmp_path), LocalStore(lock_dir=tmp_path)
    names = [f"tags http://registry apps/app{n}" for n in range(300)]  # more than 256
    async with first.lock(names[0], ttl=30, wait=1):
        for name in names[1:]:
            async with second.lock(name, ttl=30, wait=0.1):
                pass
        assert len(list(tmp_path.iterdir())) == 1  # the held one's
    assert list(tmp_path.iterdir()) == []


async def test_a_waiter_whose_file_was_removed_locks_the_next_one(tmp_path: Path) -> None:
    """Three holders in turn: each finds the file its predecessor removed and takes a new
    one, and no two ever hold the name at once."""
    import asyncio

    stores = [LocalStore(lock_dir=tmp_path) for _ in range(3)]
    holding: list[int] = []
    most = 0

    async def hold(index: int) -> None:
        nonlocal most
        async with stores[index].lock("x", ttl=30, wait=5):
            holding.append(index)
            most = max(most, len(holding))
            await asyncio.sleep(0.02)
            holding.remove(index)

    await asyncio.gather(*(hold(i) for i in range(3)))
    assert most == 1
    assert list(tmp_path.iterdir()) == []


async def test_attempts_under_way_are_counted_by_every_worker(tmp_path: Path) -> None:
    """Workers count a (user, address)'s login attempts under way in one file they lock in
    turn; a failure sent before letting go is in the other's inbox when it counts next."""
    mesh = Mesh(2)
    first, second = (LocalStore(mesh.peers(n), tmp_path) for n in range(2))  # as supervised
    seen: list[Event] = []
    second.subscribe(lambda event, _age: seen.append(event))
    key = "192.0.2.9\0mallory"
    one, let_go = await first.reserve(key, b"guess-1", 60)
    two, _ = await second.reserve(key, b"guess-2", 60)
    assert (one, two) == (1, 2)
    first.publish(LoginFailed("mallory", "192.0.2.9"))
    let_go()
    assert (await second.reserve(key, b"guess-3", 60))[0] == 2
    assert seen == [LoginFailed("mallory", "192.0.2.9")]
    alone = LocalStore()
    assert [(await alone.reserve(key, b"x", 60))[0] for _ in range(2)] == [1, 1]
    mesh.close()


async def test_attempts_of_a_worker_that_died_count_only_until_their_time(tmp_path: Path) -> None:
    store = LocalStore(lock_dir=tmp_path)
    await store.reserve("k", b"dead", 0.05)  # never let go of
    await asyncio.sleep(0.1)
    count, let_go = await store.reserve("k", b"alive", 60)
    assert count == 1
    let_go()
    assert list(tmp_path.iterdir()) == []  # nothing under way: no file left


async def test_a_password_verified_by_one_worker_is_not_hashed_again_by_another() -> None:
    """Two workers' backend factories joined by the mesh: the second learns the first's
    verified password and answers from memory; another password is still checked."""
    from concurrent.futures import ThreadPoolExecutor

    from proxy.authn import Outcome
    from proxy.authn.chain import BackendFactory
    from proxy.authn.credentials import PasswordHash, hash_password, parse_htpasswd
    from proxy.authn.htpasswd import HtpasswdAuthenticator, UserFiles

    mesh = Mesh(2)
    key = b"k" * 32
    files = UserFiles.build(parse_htpasswd(f"alice:{hash_password('pw', 4)}\n", "h"), {})
    checked: list[bytes] = []
    verify = PasswordHash.verify

    def counting(self: PasswordHash, password: bytes) -> bool:
        checked.append(password)
        return verify(self, password)

    with ThreadPoolExecutor(2) as pool, pytest.MonkeyPatch.context() as patch:
        patch.setattr(PasswordHash, "verify", counting)
        stores, backends = [], []
        for index in range(2):
            store = LocalStore(mesh.peers(index))
            factory = BackendFactory(pool, credentials_key=key, share=store.tell_workers)
            store.subscribe(factory.learn)
            stores.append(store)
            (backend,) = factory.build(("htpasswd",), files, None, CacheSettings())
            assert isinstance(backend, HtpasswdAuthenticator)
            backends.append(backend)
        assert (await backends[0].authenticate("alice", "pw")).outcome is Outcome.OK
        assert stores[1].deliver() == 3  # checking "alice", verified, done checking
        assert (await backends[1].authenticate("alice", "pw")).outcome is Outcome.OK
        assert checked == [b"pw"]  # one hash for both workers
        assert (await backends[1].authenticate("alice", "wrong")).outcome is Outcome.WRONG_PASSWORD
        assert checked == [b"pw", b"wrong"]
    mesh.close()
