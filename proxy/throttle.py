"""Brute-force throttling of failed logins. Pure: the clock is passed in.

Two counters, each forgetting failures older than `window`:
- per client address: after `attempts` failures that address gets 429 for a while;
- per user name: after 4 x `attempts` failures (a guesser spread over many addresses), that
  user is throttled too, but only from addresses that never logged in as that user, so an
  attacker cannot lock the real user out.
Each further failure while over the limit doubles the lockout, up to `max_delay`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .config import Throttle as Settings

MAX_TRACKED = 50_000  # keys remembered at most (oldest forgotten first): bounded memory
KNOWN_GOOD_PER_USER = 64
USER_FACTOR = 4


@dataclass
class _Counter:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    lockouts: int = 0


class Throttle:
    """Remembers recent failures; answers how long a login attempt must wait."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._counters: OrderedDict[str, _Counter] = OrderedDict()
        # Checks under way, not yet counted: key -> {attempt: how many requests share it}.
        self._pending: dict[str, dict[bytes, int]] = {}
        self._known_good: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    def retry_after(self, user: str, address: str, now: float) -> float:
        """Seconds to wait before this (user, address) may try; 0 if it may try now.

        Distinct guesses still under way count as failures here, so guesses sent all at once
        cannot slip past the limit before the first of them is verified. Identical attempts
        (a client's parallel requests with the same credentials) count once."""
        keys = [(f"addr:{address}", self.settings.attempts)]
        if not self.known_good(user, address):
            keys.append((f"user:{user}", self.settings.attempts * USER_FACTOR))
        wait = max(self._locked(key, now) for key, _ in keys)
        if wait == 0 and any(self._busy(key, limit, now) for key, limit in keys):
            wait = 1.0
        return wait

    def started(self, user: str, address: str, attempt: bytes) -> None:
        """`attempt` identifies the credentials (a keyed hash, never the password)."""
        for key in (f"addr:{address}", f"user:{user}"):
            attempts = self._pending.setdefault(key, {})
            attempts[attempt] = attempts.get(attempt, 0) + 1

    def finished(self, user: str, address: str, attempt: bytes) -> None:
        for key in (f"addr:{address}", f"user:{user}"):
            attempts = self._pending.get(key, {})
            left = attempts.get(attempt, 0) - 1
            if left > 0:
                attempts[attempt] = left
            else:
                attempts.pop(attempt, None)
            if not attempts:
                self._pending.pop(key, None)

    def _busy(self, key: str, limit: int, now: float) -> bool:
        """Checks under way would reach the limit if they all failed."""
        pending = len(self._pending.get(key, {}))
        if not pending:
            return False
        counter = self._counters.get(key)
        window_start = now - self.settings.window
        recent = sum(1 for t in counter.failures if t > window_start) if counter else 0
        return recent + pending >= limit

    def failure(self, user: str, address: str, now: float) -> None:
        self._count(f"addr:{address}", self.settings.attempts, now)
        self._count(f"user:{user}", self.settings.attempts * USER_FACTOR, now)

    def known_good(self, user: str, address: str) -> bool:
        """Whether `user` has logged in from `address` (recently enough to be remembered)."""
        return address in self._known_good.get(user, {})

    def success(self, user: str, address: str) -> None:
        """A correct password: this address is known good for this user from now on. The
        address's failures stay counted: one valid account must not reset an attacker's
        count (they age out of the window)."""
        good = self._known_good.setdefault(user, OrderedDict())
        good[address] = None
        good.move_to_end(address)
        while len(good) > KNOWN_GOOD_PER_USER:
            good.popitem(last=False)
        self._known_good.move_to_end(user)
        while len(self._known_good) > MAX_TRACKED:
            self._known_good.popitem(last=False)

    def _locked(self, key: str, now: float) -> float:
        counter = self._counters.get(key)
        return max(0.0, counter.locked_until - now) if counter else 0.0

    def _count(self, key: str, limit: int, now: float) -> None:
        counter = self._counters.setdefault(key, _Counter())
        self._counters.move_to_end(key)
        while len(self._counters) > MAX_TRACKED:
            self._counters.popitem(last=False)
        failures = counter.failures
        failures.append(now)
        while failures and failures[0] <= now - self.settings.window:
            failures.popleft()
        if len(failures) >= limit:
            delay = min(self.settings.max_delay, 2.0**counter.lockouts)
            counter.lockouts += 1
            counter.locked_until = now + delay
        elif counter.locked_until <= now - self.settings.window:
            counter.lockouts = 0
