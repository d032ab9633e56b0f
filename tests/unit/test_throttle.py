"""Brute-force throttling keyed by who fails (pure, with a fake clock), and the client
address behind proxies."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.authn.throttle import SPRAY_FACTOR, USER_FACTOR, Throttle, ThrottleSettings
from proxy.core.addresses import origin, parse_networks
from proxy.state.events import LoginFailed, LoginSucceeded

S = ThrottleSettings(attempts=3, window=60.0, max_delay=100.0)


def test_a_user_is_throttled_at_an_address_after_attempts_and_lockout_grows() -> None:
    throttle = Throttle()
    now = 1000.0
    for _ in range(2):
        throttle.failure("alice", "10.0.0.1", now, S)
        assert throttle.retry_after("alice", "10.0.0.1", now, S) == 0
    throttle.failure("alice", "10.0.0.1", now, S)
    waits = [throttle.retry_after("alice", "10.0.0.1", now, S)]
    for _ in range(5):
        now += waits[-1]  # wait out the lockout, then fail again
        assert throttle.retry_after("alice", "10.0.0.1", now, S) == 0
        throttle.failure("alice", "10.0.0.1", now, S)
        waits.append(throttle.retry_after("alice", "10.0.0.1", now, S))
    assert waits == [1, 2, 4, 8, 16, 32]
    # The same user elsewhere, and other users at the same address, are not refused.
    assert throttle.retry_after("alice", "10.0.0.2", now, S) == 0
    assert throttle.retry_after("bob", "10.0.0.1", now, S) == 0


def test_one_stale_secret_does_not_lock_out_the_office() -> None:
    """A CI job with a wrong password behind the office NAT: only that job waits."""
    throttle = Throttle()
    for _ in range(10):
        throttle.failure("ci-old", "198.51.100.7", 0.0, S)
    assert throttle.retry_after("ci-old", "198.51.100.7", 0.0, S) > 0
    for colleague in ("alice", "bob", "carol", "new-user"):
        assert throttle.retry_after(colleague, "198.51.100.7", 0.0, S) == 0


def test_lockout_is_capped() -> None:
    s = ThrottleSettings(attempts=1, window=10_000.0, max_delay=5.0)
    throttle = Throttle()
    now = 0.0
    for _ in range(10):
        throttle.failure("u", "a", now, s)
        now += throttle.retry_after("u", "a", now, s)
    throttle.failure("u", "a", now, s)
    assert throttle.retry_after("u", "a", now, s) == 5.0


def test_old_failures_are_forgotten() -> None:
    throttle = Throttle()
    throttle.failure("alice", "10.0.0.1", 0.0, S)
    throttle.failure("alice", "10.0.0.1", 1.0, S)
    throttle.failure("alice", "10.0.0.1", 100.0, S)  # the first two are out of the window
    assert throttle.retry_after("alice", "10.0.0.1", 100.0, S) == 0


def test_spraying_many_users_from_one_address_locks_it_for_strangers_only() -> None:
    throttle = Throttle()
    throttle.success("alice", "203.0.113.9")  # alice works here
    for n in range(S.attempts * SPRAY_FACTOR - 1):
        throttle.failure(f"victim{n}", "203.0.113.9", 5.0, S)
    assert throttle.retry_after("newcomer", "203.0.113.9", 5.0, S) == 0
    throttle.failure("victim-last", "203.0.113.9", 5.0, S)  # one distinct user too many
    assert throttle.retry_after("newcomer", "203.0.113.9", 5.0, S) > 0
    assert throttle.retry_after("alice", "203.0.113.9", 5.0, S) == 0  # known good: not refused
    assert throttle.retry_after("newcomer", "203.0.113.10", 5.0, S) == 0


def test_distributed_guessing_throttles_the_user_but_not_where_they_logged_in() -> None:
    throttle = Throttle()
    throttle.success("alice", "192.168.1.5")
    for i in range(S.attempts * USER_FACTOR):
        throttle.failure("alice", f"203.0.113.{i}", 10.0, S)  # never 3 from one address
    assert throttle.retry_after("alice", "203.0.113.200", 10.0, S) > 0  # new guesser: waits
    assert throttle.retry_after("alice", "192.168.1.5", 10.0, S) == 0  # the real user: not locked
    assert throttle.retry_after("bob", "203.0.113.200", 10.0, S) == 0


def test_a_known_good_user_is_still_refused_for_their_own_failures() -> None:
    throttle = Throttle()
    throttle.success("alice", "10.0.0.1")
    for _ in range(S.attempts):
        throttle.failure("alice", "10.0.0.1", 0.0, S)
    assert throttle.retry_after("alice", "10.0.0.1", 0.0, S) > 0


def test_a_valid_login_does_not_reset_the_spray_count() -> None:
    throttle = Throttle()
    for n in range(S.attempts * SPRAY_FACTOR):
        throttle.failure(f"victim{n}", "10.0.0.1", 0.0, S)
        throttle.success("mallory", "10.0.0.1")  # the attacker's own account
    assert throttle.retry_after("erin", "10.0.0.1", 0.0, S) > 0


def test_distinct_guesses_under_way_count_identical_ones_once() -> None:
    throttle = Throttle()
    for n in range(S.attempts):
        throttle.started("alice", "10.0.0.1", f"guess{n}".encode())
    assert throttle.retry_after("alice", "10.0.0.1", 0.0, S) > 0
    other = Throttle()
    for _ in range(10):  # one client's parallel requests with the same credentials
        other.started("alice", "10.0.0.1", b"same")
    assert other.retry_after("alice", "10.0.0.1", 0.0, S) == 0


def test_a_storm_of_different_users_logging_in_from_one_address_is_not_throttled() -> None:
    """64 CI runners behind one address, each its own user, credentials not yet cached."""
    throttle = Throttle()
    for n in range(64):
        throttle.started(f"runner{n}", "10.9.9.9", f"pw{n}".encode())
    assert all(throttle.retry_after(f"runner{n}", "10.9.9.9", 0.0, S) == 0 for n in range(64))
    # ...while guessing from that address is: once it has been failing, logins under way
    # from strangers count as guesses too.
    for n in range(S.attempts * SPRAY_FACTOR - 1):
        throttle.failure(f"guess{n}", "10.9.9.9", 0.0, S)
    assert throttle.retry_after("stranger", "10.9.9.9", 0.0, S) > 0


def test_finished_checks_stop_counting() -> None:
    throttle = Throttle()
    for n in range(S.attempts):
        throttle.started("alice", "10.0.0.1", f"g{n}".encode())
    for n in range(S.attempts):
        throttle.finished("alice", "10.0.0.1", f"g{n}".encode())
    assert throttle.retry_after("alice", "10.0.0.1", 0.0, S) == 0


def test_outcomes_are_published_and_applied_without_publishing_again() -> None:
    published: list[object] = []
    throttle = Throttle(published.append)
    throttle.failure("alice", "10.0.0.1", 0.0, S)
    throttle.success("bob", "10.0.0.2")
    throttle.success("bob", "10.0.0.2")  # not news
    assert published == [LoginFailed("alice", "10.0.0.1"), LoginSucceeded("bob", "10.0.0.2")]
    other_published: list[object] = []
    other = Throttle(other_published.append)
    for event in published * S.attempts:
        other.apply(event, 0.0, S)  # type: ignore[arg-type]
    assert other_published == []
    assert other.retry_after("alice", "10.0.0.1", 0.0, S) > 0
    assert other.known_good("bob", "10.0.0.2")


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
        # IPv4 clients of a listener on [::] come as IPv4-mapped IPv6: read as IPv4
        ("::ffff:203.0.113.9", [], "203.0.113.9"),
        ("::ffff:10.0.0.2", ["1.2.3.4"], "1.2.3.4"),
        ("10.0.0.2", ["6.6.6.6, ::ffff:10.0.0.3"], "6.6.6.6"),
    ],
)
def test_client_address(peer: str, forwarded: list[str], expected: str) -> None:
    result = origin(peer, forwarded, TRUSTED)
    assert result.address == ipaddress.ip_address(expected)


def test_ipv6_clients_are_counted_by_their_64() -> None:
    from proxy.core.addresses import throttle_key

    one, other = ipaddress.ip_address("2001:db8:1:2::1"), ipaddress.ip_address("2001:db8:1:2::ff")
    assert throttle_key(one) == throttle_key(other) == "2001:db8:1:2::/64"
    assert throttle_key(ipaddress.ip_address("2001:db8:1:3::1")) != throttle_key(one)
    assert throttle_key(ipaddress.ip_address("192.0.2.7")) == "192.0.2.7"
    assert throttle_key(None) == "unknown"


def test_token_logins_lock_only_themselves_and_are_never_known_good() -> None:
    from proxy.authn.throttle import token_login

    throttle = Throttle()
    tokens = [token_login(bytes([n]) * 32) for n in range(S.attempts * SPRAY_FACTOR + 5)]
    for token in tokens:  # many failing tokens from one runner
        throttle.failure(token, "10.0.0.9", 0.0, S)
    assert throttle.retry_after("stranger", "10.0.0.9", 0.0, S) == 0  # no spraying lock
    for _ in range(S.attempts):
        throttle.failure(tokens[0], "10.0.0.9", 0.0, S)
    assert throttle.retry_after(tokens[0], "10.0.0.9", 0.0, S) > 0  # that token is locked
    assert throttle.retry_after(tokens[1], "10.0.0.9", 0.0, S) == 0
    throttle.success(tokens[2], "10.0.0.9")
    assert not throttle.known_good(tokens[2], "10.0.0.9")
