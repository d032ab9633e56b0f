"""The verified-credential cache every backend uses (proxy.authn.cache): expiry by an injected
clock, LRU bounds, single flight, and failures never remembered. No I/O; the only sleep stands
for a worker descheduled right after it tells the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable

import pytest

from proxy.authn import fingerprint
from proxy.authn.cache import VerifiedCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Checker:
    """A check that counts its calls and finishes when the test says so."""

    def __init__(self, answer: bool = True) -> None:
        self.calls = 0
        self.answer = answer
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> bool:
        self.calls += 1
        await self.gate.wait()
        return self.answer


async def ticks(n: int = 5) -> None:
    """Let every task that is ready run (no time passes: nothing here sleeps on a clock)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_success_is_remembered_until_the_ttl_runs_out() -> None:
    clock, check = Clock(), Checker()
    cache: VerifiedCache[bool] = VerifiedCache(60, 10, clock)
    assert await cache.check("alice", b"pw", check, keep=bool)
    clock.now += 59.9
    assert await cache.check("alice", b"pw", check, keep=bool)
    assert check.calls == 1
    clock.now += 0.2  # past the ttl
    assert await cache.check("alice", b"pw", check, keep=bool)
    assert check.calls == 2


async def test_another_secret_always_checks_again() -> None:
    check = Checker()
    cache: VerifiedCache[bool] = VerifiedCache(60, 10, Clock())
    await cache.check("alice", b"pw", check, keep=bool)
    await cache.check("alice", b"other", check, keep=bool)
    assert check.calls == 2


async def test_failures_are_never_remembered() -> None:
    check = Checker(answer=False)
    cache: VerifiedCache[bool] = VerifiedCache(60, 10, Clock())
    for _ in range(3):
        assert not await cache.check("alice", b"pw", check, keep=bool)
    assert check.calls == 3 and len(cache) == 0


async def test_ttl_zero_remembers_nothing() -> None:
    check = Checker()
    cache: VerifiedCache[bool] = VerifiedCache(0, 10, Clock())
    await cache.check("alice", b"pw", check, keep=bool)
    await cache.check("alice", b"pw", check, keep=bool)
    assert check.calls == 2


async def test_the_least_recently_used_entry_goes_first() -> None:
    check = Checker()
    cache: VerifiedCache[bool] = VerifiedCache(60, 2, Clock())
    for user in ("a", "b"):
        await cache.check(user, b"pw", check, keep=bool)
    await cache.check("a", b"pw", check, keep=bool)  # a is used again: b is the oldest
    await cache.check("c", b"pw", check, keep=bool)
    assert check.calls == 3
    await cache.check("a", b"pw", check, keep=bool)
    assert check.calls == 3  # still remembered
    await cache.check("b", b"pw", check, keep=bool)
    assert check.calls == 4  # forgotten


async def test_identical_checks_under_way_share_one() -> None:
    check = Checker()
    check.gate.clear()
    cache: VerifiedCache[bool] = VerifiedCache(60, 10, Clock())
    waiting = [asyncio.ensure_future(cache.check("a", b"pw", check, keep=bool)) for _ in range(10)]
    other = asyncio.ensure_future(cache.check("a", b"different", check, keep=bool))
    await ticks()  # every caller is now waiting on the check it started or joined
    assert check.calls == 2
    check.gate.set()
    assert all(await asyncio.gather(*waiting, other))
    assert check.calls == 2


async def test_cancelling_one_caller_does_not_cancel_the_shared_check() -> None:
    check = Checker()
    check.gate.clear()
    cache: VerifiedCache[bool] = VerifiedCache(60, 10, Clock())
    first = asyncio.ensure_future(cache.check("a", b"pw", check, keep=bool))
    second = asyncio.ensure_future(cache.check("a", b"pw", check, keep=bool))
    await ticks()
    first.cancel()
    check.gate.set()
    assert await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert check.calls == 1


async def test_forget() -> None:
    check = Checker()
    cache: VerifiedCache[bool] = VerifiedCache(60, 10, Clock())
    for user in ("a", "b"):
        await cache.check(user, b"pw", check, keep=bool)
    cache.forget("a")
    assert len(cache) == 1
    cache.forget()
    assert len(cache) == 0


class Siblings:
    """Two workers' caches, each telling the other what it verified and what it is hashing
    (the worker mesh, delivered at once)."""

    def __init__(self, wait_elsewhere: float = 5.0, preempted: float = 0.0) -> None:
        key = b"k" * 32
        self.preempted = preempted  # seconds a worker is descheduled right after it tells
        self.said: list[bool] = []  # each "checking" (False) and "ended" (True) told
        self.said_often = asyncio.Event()  # "checking" told six times
        self.first: VerifiedCache[bool]
        self.second: VerifiedCache[bool]
        self.first = VerifiedCache(60, 10, Clock(), key, self._to(1), self._told(1), wait_elsewhere)
        self.second = VerifiedCache(60, 10, Clock(), key, self._to(0), self._told(0),
                                    wait_elsewhere)  # fmt: skip

    def _other(self, index: int) -> VerifiedCache[bool]:
        return (self.first, self.second)[index]

    def _to(self, index: int) -> Callable[[Hashable, bytes, float], None]:
        return lambda key, tag, seconds: self._other(index).learn(key, tag, seconds, True)

    def _told(self, index: int) -> Callable[[Hashable, bytes, bool], None]:
        def tell(key: Hashable, tag: bytes, ended: bool) -> None:
            self.said.append(ended)
            if self.said.count(False) >= 6:
                self.said_often.set()
            self._other(index).noticed(key, tag, ended)
            time.sleep(self.preempted)

        return tell


async def test_a_password_another_worker_is_hashing_is_not_hashed_again() -> None:
    workers, first, second = Siblings(), Checker(), Checker()
    first.gate.clear()
    hashing = asyncio.ensure_future(workers.first.check("alice", b"pw", first, keep=bool))
    await ticks()
    waiting = asyncio.ensure_future(workers.second.check("alice", b"pw", second, keep=bool))
    await ticks()
    assert not waiting.done()  # waits for the first worker's answer
    first.gate.set()
    assert await hashing and await waiting
    assert (first.calls, second.calls) == (1, 0)


async def test_a_wrong_password_elsewhere_is_checked_here_after_it() -> None:
    workers, first, second = Siblings(), Checker(answer=False), Checker(answer=False)
    first.gate.clear()
    hashing = asyncio.ensure_future(workers.first.check("alice", b"bad", first, keep=bool))
    await ticks()
    waiting = asyncio.ensure_future(workers.second.check("alice", b"bad", second, keep=bool))
    await ticks()
    assert second.calls == 0
    first.gate.set()
    assert not await hashing and not await waiting
    assert (first.calls, second.calls) == (1, 1)  # a failure is never taken on hearsay


async def test_a_worker_that_never_ends_its_check_holds_nobody_past_the_deadline() -> None:
    workers, second = Siblings(wait_elsewhere=0.05), Checker()
    workers.second.noticed("alice", fingerprint(b"k" * 32, b"pw"), ended=False)
    assert await workers.second.check("alice", b"pw", second, keep=bool)
    assert second.calls == 1


@pytest.mark.parametrize("preempted", [0.0, 0.015])
async def test_a_check_queued_elsewhere_past_the_deadline_is_still_waited_for(
    preempted: float,
) -> None:
    """In a storm a worker's checks queue behind each other for longer than the deadline:
    while that worker keeps saying the check is under way, the other does not hash it too,
    also when the worker is descheduled for over half the deadline right after it says so."""
    workers = Siblings(wait_elsewhere=0.02, preempted=preempted)
    first, second = Checker(), Checker()
    first.gate.clear()
    hashing = asyncio.ensure_future(workers.first.check("alice", b"pw", first, keep=bool))
    await ticks()
    waiting = asyncio.ensure_future(workers.second.check("alice", b"pw", second, keep=bool))
    await workers.said_often.wait()  # three deadlines' worth of "still checking"
    assert not waiting.done() and second.calls == 0
    first.gate.set()
    assert await hashing and await waiting
    assert (first.calls, second.calls) == (1, 0)
    assert workers.said[-1] is True and workers.said.count(True) == 1  # the end, said last
