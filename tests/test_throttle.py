"""Brute-force throttling (pure, with a fake clock) and the client address behind proxies."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.config import Throttle as Settings
from proxy.policy import client_address, parse_networks
from proxy.throttle import USER_FACTOR, Throttle

SETTINGS = Settings(attempts=3, window=60.0, max_delay=100.0)


def test_address_is_throttled_after_attempts_and_lockout_grows() -> None:
    throttle = Throttle(SETTINGS)
    now = 1000.0
    for _ in range(2):
        throttle.failure("alice", "10.0.0.1", now)
        assert throttle.retry_after("alice", "10.0.0.1", now) == 0
    throttle.failure("alice", "10.0.0.1", now)
    waits = [throttle.retry_after("alice", "10.0.0.1", now)]
    for _ in range(5):
        now += waits[-1]  # wait out the lockout, then fail again
        assert throttle.retry_after("alice", "10.0.0.1", now) == 0
        throttle.failure("alice", "10.0.0.1", now)
        waits.append(throttle.retry_after("alice", "10.0.0.1", now))
    assert waits == [1, 2, 4, 8, 16, 32]
    # Any user from that address waits too; another address does not.
    assert throttle.retry_after("bob", "10.0.0.1", now) > 0
    assert throttle.retry_after("bob", "10.0.0.2", now) == 0


def test_lockout_is_capped() -> None:
    throttle = Throttle(Settings(attempts=1, window=10_000.0, max_delay=5.0))
    now = 0.0
    for _ in range(10):
        throttle.failure("u", "a", now)
        now += throttle.retry_after("u", "a", now)
    throttle.failure("u", "a", now)
    assert throttle.retry_after("u", "a", now) == 5.0


def test_old_failures_are_forgotten() -> None:
    throttle = Throttle(SETTINGS)
    throttle.failure("alice", "10.0.0.1", 0.0)
    throttle.failure("alice", "10.0.0.1", 1.0)
    throttle.failure("alice", "10.0.0.1", 100.0)  # the first two are out of the window
    assert throttle.retry_after("alice", "10.0.0.1", 100.0) == 0


def test_distributed_guessing_throttles_the_user_but_not_where_they_logged_in() -> None:
    throttle = Throttle(SETTINGS)
    throttle.success("alice", "192.168.1.5")
    for i in range(SETTINGS.attempts * USER_FACTOR):
        throttle.failure("alice", f"203.0.113.{i}", 10.0)  # never 3 from one address
    assert throttle.retry_after("alice", "203.0.113.200", 10.0) > 0  # new guesser: waits
    assert throttle.retry_after("alice", "192.168.1.5", 10.0) == 0  # the real user: not locked
    assert throttle.retry_after("bob", "203.0.113.200", 10.0) == 0


def test_a_valid_login_does_not_reset_the_address_count() -> None:
    throttle = Throttle(SETTINGS)
    for victim in ("bob", "carol"):
        throttle.failure(victim, "10.0.0.1", 0.0)
        throttle.success("mallory", "10.0.0.1")  # the attacker's own account
    throttle.failure("dave", "10.0.0.1", 0.0)
    assert throttle.retry_after("erin", "10.0.0.1", 0.0) > 0


TRUSTED = parse_networks(["10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.2", ["1.2.3.4"], "1.2.3.4"),
        ("10.0.0.2", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # rightmost untrusted hop
        ("10.0.0.2", ["6.6.6.6, 1.2.3.4, 10.0.0.7"], "1.2.3.4"),
        ("10.0.0.2", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),  # several headers: in order
        ("10.0.0.2", ["not-an-ip"], "10.0.0.2"),
        ("10.0.0.2", [], "10.0.0.2"),
        ("::1", ["2001:db8::5"], "2001:db8::5"),
        ("10.0.0.2", ["10.0.0.3"], "10.0.0.3"),  # all trusted: the leftmost known
    ],
)
def test_client_address(peer: str, forwarded: list[str], expected: str) -> None:
    result = client_address(ipaddress.ip_address(peer), forwarded, TRUSTED)
    assert result == ipaddress.ip_address(expected)
