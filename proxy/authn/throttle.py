"""Brute-force throttling of failed logins, keyed by who fails: per (address, user), per
address by distinct users (spraying), per user across addresses. Pure.

One CI job with a stale secret locks out only itself, not the office behind the same address,
and a user is never locked out at addresses they have logged in from.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.lru import LRU
from ..state.events import Event, LoginFailed, LoginSucceeded

MAX_TRACKED = 50_000  # keys remembered at most (oldest forgotten first): bounded memory
KNOWN_GOOD_PER_USER = 64
USER_FACTOR = 4  # failures across addresses before a user is locked, x attempts
SPRAY_FACTOR = 4  # distinct failing users before an address is locked, x attempts
# Checks still under way count, so distinct guesses sent at once cannot slip past the limit;
# identical attempts (one client's parallel requests) count once.


@dataclass(frozen=True)
class ThrottleSettings:
    """`throttle:` in the config: failed logins before 429, per (address, user)."""

    attempts: int = 5
    window: float = 300.0
    max_delay: float = 900.0


@dataclass
class _Counter:
    """Failure times in the window (with who failed, for the spraying count)."""

    failures: deque[tuple[float, str]] = field(default_factory=deque)
    locked_until: float = 0.0
    lockouts: int = 0

    def recent(self, since: float) -> int:
        return sum(1 for t, _ in self.failures if t > since)

    def distinct(self, since: float) -> set[str]:
        return {who for t, who in self.failures if t > since}


def _counter(counters: LRU[str, _Counter], key: str) -> _Counter:
    """The key's counter, made when it has none yet."""
    counter = counters.get(key)
    if counter is None:
        counter = _Counter()
        counters.put(key, counter)
    return counter


_TOKEN = ":token:"  # no Basic user name starts with ':' (it ends the name)


def token_login(attempt: bytes) -> str:
    """The name a workload token's login is counted under (from its keyed hash)."""
    # Its failures lock only that token; it is no distinct user for spraying and never a
    # known-good login (each token is new: it would only push real users' addresses out).
    return _TOKEN + attempt[:6].hex()


def pair(user: str, address: str) -> str:
    """The key of one user's logins from one address."""
    return f"{address}\0{user}"


class Throttle:
    """Remembers recent failures; answers how long a login attempt must wait."""

    def __init__(self, publish: Callable[[Event], None] = lambda _: None) -> None:
        self._publish = publish
        self._pairs: LRU[str, _Counter] = LRU(MAX_TRACKED)
        self._addresses: LRU[str, _Counter] = LRU(MAX_TRACKED)
        self._users: LRU[str, _Counter] = LRU(MAX_TRACKED)
        # Checks under way, not yet counted: key -> {attempt: how many requests share it}.
        self._pending: dict[str, dict[bytes, int]] = {}
        self._known_good: LRU[str, LRU[str, bool]] = LRU(MAX_TRACKED)  # user -> addresses

    def retry_after(
        self, user: str, address: str, now: float, s: ThrottleSettings, under_way: int = 0
    ) -> float:
        """Seconds to wait before this (user, address) may try (0: now), counting its
        attempts `under_way` elsewhere."""
        key = pair(user, address)
        wait = _locked(self._pairs.get(key), now)
        busy = self._busy(key, self._pairs.get(key), s.attempts, now - s.window, under_way)
        if not self.known_good(user, address):
            wait = max(
                wait,
                _locked(self._addresses.get(address), now),
                _locked(self._users.get(user), now),
            )
            busy = busy or self._user_busy(user, now - s.window, s)
            busy = busy or self._spray_busy(address, now - s.window, s)
        return wait if wait > 0 or not busy else 1.0

    def _busy(
        self, key: str, counter: _Counter | None, limit: int, since: float, under_way: int = 0
    ) -> bool:
        """Checks under way would reach the limit if they all failed."""
        pending = max(len(self._pending.get(key, ())), under_way)
        return pending > 0 and (counter.recent(since) if counter else 0) + pending >= limit

    def _user_busy(self, user: str, since: float, s: ThrottleSettings) -> bool:
        return self._busy(f"user\0{user}", self._users.get(user), s.attempts * USER_FACTOR, since)

    def _spray_busy(self, address: str, since: float, s: ThrottleSettings) -> bool:
        """Only an address that has been failing counts its logins under way as guesses."""
        counter = self._addresses.get(address)
        failed = counter.distinct(since) if counter else set()
        if not failed:
            return False
        pending = len(self._pending.get(f"addr\0{address}", ()))
        return pending > 0 and len(failed) + pending >= s.attempts * SPRAY_FACTOR

    def _pending_keys(self, user: str, address: str, attempt: bytes) -> list[tuple[str, bytes]]:
        # Per address, what is pending is a user name (spraying counts users, not passwords).
        return [
            (pair(user, address), attempt),
            (f"user\0{user}", attempt),
            (f"addr\0{address}", user.encode("utf-8", "surrogateescape")),
        ]

    def started(self, user: str, address: str, attempt: bytes) -> None:
        """`attempt` identifies the credentials (a keyed hash, never the password)."""
        for key, token in self._pending_keys(user, address, attempt):
            tokens = self._pending.setdefault(key, {})
            tokens[token] = tokens.get(token, 0) + 1

    def finished(self, user: str, address: str, attempt: bytes) -> None:
        for key, token in self._pending_keys(user, address, attempt):
            tokens = self._pending.get(key, {})
            left = tokens.get(token, 0) - 1
            if left > 0:
                tokens[token] = left
            else:
                tokens.pop(token, None)
            if not tokens:
                self._pending.pop(key, None)

    def failure(self, user: str, address: str, now: float, s: ThrottleSettings) -> None:
        """A wrong password: counted here and told to the others."""
        self._count_failure(user, address, now, s)
        self._publish(LoginFailed(user, address))

    def success(self, user: str, address: str) -> None:
        """A correct password: this address is known good for this user from now on."""
        # The address's failures stay counted: one valid account must not reset an attacker's.
        if self._remember(user, address):
            self._publish(LoginSucceeded(user, address))

    def apply(self, event: Event, now: float, s: ThrottleSettings) -> None:
        """What another worker or replica saw, applied as if seen here (not published)."""
        if isinstance(event, LoginFailed):
            self._count_failure(event.user, event.address, now, s)
        elif isinstance(event, LoginSucceeded):
            self._remember(event.user, event.address)

    def known_good(self, user: str, address: str) -> bool:
        """Whether `user` has logged in from `address` (recently enough to be remembered)."""
        good = self._known_good.get(user)
        return good is not None and address in good

    def _remember(self, user: str, address: str) -> bool:
        if user.startswith(_TOKEN):
            return False
        good = self._known_good.get(user)
        if good is not None and address in good:
            return False
        if good is None:
            good = LRU(KNOWN_GOOD_PER_USER)
            self._known_good.put(user, good)
        good.put(address, True)
        return True

    def _count_failure(self, user: str, address: str, now: float, s: ThrottleSettings) -> None:
        since = now - s.window
        _fail(_counter(self._pairs, pair(user, address)), user, now, since, s, s.attempts)
        _fail(_counter(self._users, user), address, now, since, s, s.attempts * USER_FACTOR)
        if user.startswith(_TOKEN):
            return
        spray = _counter(self._addresses, address)
        _record(spray, user, now, since)
        if len(spray.distinct(since)) >= s.attempts * SPRAY_FACTOR:
            _lock(spray, now, s)


def _locked(counter: _Counter | None, now: float) -> float:
    return max(0.0, counter.locked_until - now) if counter else 0.0


def _record(counter: _Counter, who: str, now: float, since: float) -> None:
    counter.failures.append((now, who))
    while counter.failures and counter.failures[0][0] <= since:
        counter.failures.popleft()
    if counter.locked_until <= since:
        counter.lockouts = 0  # quiet for a whole window: start over


def _fail(
    counter: _Counter, who: str, now: float, since: float, s: ThrottleSettings, limit: int
) -> None:
    _record(counter, who, now, since)
    if len(counter.failures) >= limit:
        _lock(counter, now, s)


def _lock(counter: _Counter, now: float, s: ThrottleSettings) -> None:
    """Each failure at or over the limit doubles the lockout, up to max_delay."""
    delay = min(s.max_delay, 2.0**counter.lockouts)
    counter.lockouts += 1
    counter.locked_until = max(counter.locked_until, now + delay)
