"""Fair share's own pieces (proxy.core.limits): capacity split, fair upstream slots, pace,
the watchdog on writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.limits import Capacity, FairSlots, Limits, Pace, Watchdog


@pytest.mark.parametrize(
    ("upstream", "per_user", "own", "forwarded", "share"),
    [
        (512, 0, 32, 480, 60),  # the defaults: a sixteenth for the proxy's own, an eighth each
        (6, 0, 2, 4, 1),
        (2, 0, 2, 1, 1),  # tiny pools keep one for clients and two of their own
        (512, 100, 32, 480, 100),
    ],
)
def test_the_upstream_pool_is_split(
    upstream: int, per_user: int, own: int, forwarded: int, share: int
) -> None:
    room = Capacity(100, upstream)
    assert (room.own, room.forwarded) == (own, forwarded)
    assert room.per_user(Limits(upstream_per_user=per_user)) == share


async def test_an_owner_holds_no_more_than_its_share() -> None:
    slots = FairSlots(4)
    assert [await slots.acquire("a", 2, 0.01) for _ in range(3)] == [True, True, False]
    assert await slots.acquire("b", 2, 0.01)
    assert slots.held("a") == 2 and slots.held("b") == 1


async def test_a_freed_slot_goes_to_the_waiter_holding_fewest() -> None:
    slots = FairSlots(2)
    assert await slots.acquire("heavy", 2, 0.01) and await slots.acquire("heavy", 2, 0.01)
    heavy = asyncio.ensure_future(slots.acquire("heavy", 3, 5))  # waits first
    light = asyncio.ensure_future(slots.acquire("light", 3, 5))  # waits second
    await asyncio.sleep(0)
    slots.release("heavy")
    assert await light and not heavy.done()  # the newcomer goes first
    slots.release("heavy")
    assert await heavy


async def test_a_waiter_that_gives_up_holds_no_one_up() -> None:
    slots = FairSlots(1)
    assert await slots.acquire("a", 1, 0.01)
    assert not await slots.acquire("b", 1, 0.01)  # gave up
    slots.release("a")
    assert await slots.acquire("c", 1, 0.01) and slots.held("b") == 0


def test_a_transfer_at_the_rate_goes_on_and_a_slower_one_is_cut() -> None:
    pace = Pace(rate=100, window=10, now=0)
    assert pace.deadline() == 10
    assert pace.moved(600, now=4) and pace.moved(500, now=9)  # 1,100 bytes in 10 s
    assert pace.deadline() == 20  # this window's quota is met: the next one's end
    assert pace.moved(1000, now=19)
    assert not pace.moved(10, now=31)  # 20 to 30 moved nothing


def test_a_fast_start_buys_no_slow_end() -> None:
    pace = Pace(rate=100, window=10, now=0)
    assert pace.moved(10**9, now=1)
    assert pace.moved(1, now=12)
    assert not pace.moved(1, now=21)  # the second window moved 1 byte


def test_no_rate_never_cuts() -> None:
    pace = Pace(rate=0, window=10, now=0)
    assert pace.moved(0, now=10**6) and pace.deadline() == float("inf")


@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 5)), max_size=50))
def test_pace_agrees_with_counting_each_window(moves: list[tuple[int, float]]) -> None:
    """Moves (bytes, seconds since the last): the pace refuses exactly when some window that
    ended by the time of a move had moved less than its quota."""
    rate, window, now = 50, 10.0, 0.0
    pace = Pace(rate, window, 0.0)
    per_window: dict[int, int] = {}
    for size, gap in moves:
        now += gap
        ended = int(now // window)  # windows 0 .. ended-1 are over
        short = any(per_window.get(w, 0) < rate * window for w in range(ended))
        assert pace.moved(size, now) is not short
        if short:
            return
        per_window[ended] = per_window.get(ended, 0) + size


@dataclass
class Timer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """An event loop's clock and timers, advanced by hand: `advance` runs what falls due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        self.timers.append(timer := Timer(when, callback))
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := [t for t in self.timers if t.when <= end and not t.cancelled]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = end

    def armed(self) -> int:
        return sum(not t.cancelled for t in self.timers)


def watched(rate: int, idle: float) -> tuple[Clock, Watchdog, list[float]]:
    clock = Clock()
    stalls: list[float] = []
    loop = cast(asyncio.AbstractEventLoop, clock)
    watchdog = Watchdog(loop, idle, Pace(rate, idle, 0.0), lambda: stalls.append(clock.now))
    return clock, watchdog, stalls


def test_a_write_that_takes_longer_than_idle_is_cut_once() -> None:
    clock, watchdog, stalls = watched(rate=0, idle=10)
    watchdog.started(clock.now)
    clock.advance(9.5)
    assert not stalls
    clock.advance(0.5)
    assert stalls == [10] and watchdog.stalled
    clock.advance(100)
    assert stalls == [10]


def test_quick_writes_keep_one_timer_and_are_never_cut() -> None:
    clock, watchdog, stalls = watched(rate=0, idle=10)
    for _ in range(1000):  # a write every 0.1 s for 100 s
        watchdog.started(clock.now)
        clock.advance(0.05)
        watchdog.finished()
        clock.advance(0.05)
        assert clock.armed() <= 1
    assert not stalls
    watchdog.started(clock.now)  # the last write stalls: cut 10 s after it started
    started = clock.now
    clock.advance(20)
    assert stalls == [pytest.approx(started + 10)]


def test_a_write_is_cut_at_the_pace_deadline_before_idle() -> None:
    clock, watchdog, stalls = watched(rate=100, idle=10)
    watchdog.started(clock.now)  # the first window ends at 10 with nothing moved
    clock.advance(5)
    watchdog.finished()
    watchdog.started(clock.now)  # idle alone would allow it until 15
    clock.advance(6)
    assert stalls == [10]


def test_no_write_under_way_is_never_cut() -> None:
    clock, watchdog, stalls = watched(rate=100, idle=10)
    watchdog.started(clock.now)
    watchdog.finished()
    clock.advance(1000)  # waiting for the upstream: its own timeout and the pace cover it
    assert not stalls
    watchdog.close()
    assert clock.armed() == 0
