"""Single flight (proxy.core.flight): one computation per key at a time, shared."""

from __future__ import annotations

import asyncio

from proxy.core.flight import SingleFlight


async def test_concurrent_calls_share_one_computation() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release, runs = asyncio.Event(), []

    async def compute() -> int:
        runs.append(1)
        await release.wait()
        return len(runs)

    waiters = [asyncio.ensure_future(flights.join("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    assert flights.under_way("k") and not flights.under_way("other")
    release.set()
    assert await asyncio.gather(*waiters) == [1] * 5
    assert not flights.under_way("k")
    assert await flights.join("k", compute) == 2  # done: the next call computes again


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()
    settled: list[str] = []

    async def compute() -> str:
        await release.wait()
        return "done"

    first = asyncio.ensure_future(flights.join("k", compute, lambda f: settled.append("x")))
    second = asyncio.ensure_future(flights.join("k", compute, lambda f: settled.append("y")))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
    assert first.cancelled() and settled == ["x"]  # the flight's first caller settles it
