"""The cyclic collector around loads and in a serving process (proxy.core.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from proxy.core.collector import YOUNG_THRESHOLD, collect_young_less_often, collector_paused
from proxy.serve import server, worker


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of each collection run while the test does, the thresholds restored."""
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    seen: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.enable()
    gc.collect()
    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()


def _held(count: int) -> list[list[int]]:
    """`count` new objects the collector tracks, all kept alive."""
    return [[i] for i in range(count)]


def test_a_serving_process_runs_young_collections_less_often(collections: list[int]) -> None:
    gc.set_threshold(700, 11, 12)
    held = _held(5_000)
    assert collections.count(0) >= 5  # the default: every 700 objects kept
    collections.clear()
    collect_young_less_often()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)  # the others kept
    held += _held(YOUNG_THRESHOLD // 2)
    assert collections == []
    held += _held(YOUNG_THRESHOLD)
    assert collections  # raised, not off
    del held


def test_every_serving_worker_spaces_out_young_collections(
    collections: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_server` is where each worker (alone, worker 0 or one it started) makes its server."""
    monkeypatch.setattr(server, "Server", lambda *args: args)
    gc.set_threshold(700, 10, 10)
    worker._server(None, None, {}, None, 1.0)  # type: ignore[arg-type]
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_nothing_is_collected_while_a_load_builds(collections: list[int]) -> None:
    with collector_paused():
        with collector_paused():  # nested: the outer one decides
            built = _held(20_000)
        assert not gc.isenabled()
        built += _held(20_000)
    assert collections == []
    assert gc.isenabled()
    # What was built is old at once: the next young collection does not walk it.
    assert gc.get_count()[0] < 100
    assert len(built) == 40_000
