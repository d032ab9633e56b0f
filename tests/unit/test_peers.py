"""Login outcomes shared between workers (proxy.peers): the datagram format and two throttles
joined by a real socket mesh, in one process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import Throttle as Settings
from proxy.peers import FAILURE, SUCCESS, Mesh, SharedThrottle, decode, encode

SETTINGS = Settings(attempts=4, window=300.0, max_delay=900.0)


@pytest.mark.parametrize(
    "user",
    ["alice", "", "a:b", "nul\0inside", "é" * 100, "x" * 4096, "bad\udcff-bytes"],
)
@pytest.mark.parametrize("kind", [FAILURE, SUCCESS])
def test_round_trip(kind: bytes, user: str) -> None:
    assert decode(encode(kind, user, "2001:db8::1")) == (kind, user, "2001:db8::1")


@pytest.mark.parametrize(
    "datagram",
    [b"", b"F", b"X\x00\x01a1.2.3.4", b"F\x00\x09short", b"S\xff\xff"],
)
def test_malformed_datagrams_are_ignored(datagram: bytes) -> None:
    assert decode(datagram) is None


@given(st.binary(max_size=64))
def test_decode_never_raises(datagram: bytes) -> None:
    event = decode(datagram)
    assert event is None or event[0] in (FAILURE, SUCCESS)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


Pair = tuple[SharedThrottle, SharedThrottle, Clock]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Two workers' throttles joined by a real datagram mesh."""
    mesh, clock = Mesh(2), Clock()
    yield (
        SharedThrottle(SETTINGS, mesh.peers(0), clock),
        SharedThrottle(SETTINGS, mesh.peers(1), clock),
        clock,
    )
    mesh.close()


def test_failures_seen_by_either_worker_lock_the_address_in_both(pair: Pair) -> None:
    a, b, clock = pair
    for worker in (a, b, a):  # three failures, spread over the two workers
        worker.failure("alice", "192.0.2.7", clock.now)
    assert (a.receive(), b.receive()) == (1, 2)
    assert a.retry_after("alice", "192.0.2.7", clock.now) == 0  # 3 of 4
    b.failure("alice", "192.0.2.7", clock.now)  # the fourth, in the other worker
    assert a.receive() == 1
    assert a.retry_after("alice", "192.0.2.7", clock.now) > 0
    assert b.retry_after("alice", "192.0.2.7", clock.now) > 0
    assert a.retry_after("alice", "192.0.2.8", clock.now) == 0  # another address is not


def test_alone_each_worker_would_have_allowed_more(pair: Pair) -> None:
    a, b, clock = pair
    for worker in (a, b, a, b):
        worker.failure("bob", "192.0.2.9", clock.now)
    # Before the datagrams are read each worker has counted only its own two failures.
    assert a.retry_after("bob", "192.0.2.9", clock.now) == 0
    a.receive()
    assert a.retry_after("bob", "192.0.2.9", clock.now) > 0


def test_a_login_in_one_worker_exempts_that_address_from_the_user_lock_in_the_other(
    pair: Pair,
) -> None:
    a, b, clock = pair
    a.success("carol", "198.51.100.1")
    for n in range(4 * SETTINGS.attempts):  # a guesser spread over many addresses
        a.failure("carol", f"203.0.113.{n}", clock.now)
    b.receive()
    assert b.retry_after("carol", "203.0.113.200", clock.now) > 0  # the user is throttled...
    assert b.retry_after("carol", "198.51.100.1", clock.now) == 0  # ...but not where she logs in


def test_received_events_are_not_sent_on(pair: Pair) -> None:
    a, b, clock = pair
    a.failure("dave", "192.0.2.1", clock.now)
    assert b.receive() == 1
    assert a.receive() == 0  # b applied it without telling a again
    assert b.receive() == 0


def test_only_a_new_login_address_is_sent(pair: Pair) -> None:
    a, b, _ = pair
    for _ in range(3):  # a client's requests: each one is a successful login
        a.success("erin", "192.0.2.5")
    a.success("erin", "192.0.2.6")
    assert b.receive() == 2
    assert b.known_good("erin", "192.0.2.5") and b.known_good("erin", "192.0.2.6")
