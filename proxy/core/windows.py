"""Counts per fixed time window, kept by each process and settled with a shared total. Pure.

A window of `per` seconds starts at a multiple of `per` since the epoch (UTC), so every
process and replica agrees on it without talking. A `Tally` holds, per (key, window), what
this process has added and not yet sent (`pending`), what it sent and awaits an answer for
(`sending`), and the shared total it last learned (`seen`, which includes its own sent
amounts). Its estimate of the total is their sum: exact for what this process did, behind by
whatever the others did since its last sync. Syncing (`outgoing`, then `settled` or
`unsent`) is the caller's, one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .lru import LRU

ENTRIES = 100_000  # (key, window) pairs a process keeps, about 200 bytes each


def window_end(now: float, per: int) -> int:
    """When the window holding `now` ends (epoch seconds): the next multiple of `per`."""
    return (math.floor(now / per) + 1) * per


@dataclass(frozen=True)
class Count:
    """One line of a sync: add `amount` to `key`'s total in the window ending at `expires`."""

    key: str
    expires: int
    amount: int


@dataclass(slots=True)
class _Entry:
    seen: int = 0
    sending: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        """The estimate: the shared total last learned, plus what is not in it yet."""
        return self.seen + self.sending + self.pending


class Tally:
    """Window counts of one process; the least recently used dropped past `size`."""

    def __init__(self, size: int = ENTRIES) -> None:
        self._entries: LRU[tuple[str, int], _Entry] = LRU(size)
        # Asked about or added to since the last sync: the next one sends or refreshes them.
        self._dirty: dict[tuple[str, int], None] = {}

    def _entry(self, key: str, expires: int) -> _Entry:
        entry = self._entries.get((key, expires))
        if entry is None:
            entry = _Entry()
            self._entries.put((key, expires), entry)
        self._dirty[key, expires] = None
        return entry

    def used(self, key: str, expires: int) -> int:
        """The estimated total of `key` in the window ending at `expires` (and it is
        refreshed at the next sync)."""
        return self._entry(key, expires).total

    def known(self, key: str, expires: int) -> int:
        """The estimated total, without marking it for the next sync (a tally that never
        syncs)."""
        entry = self._entries.get((key, expires))
        return 0 if entry is None else entry.total

    def add(self, key: str, expires: int, amount: int) -> None:
        """Count `amount` (negative: give back) here, to be sent at the next sync."""
        self._entry(key, expires).pending += amount

    def heard(self, key: str, expires: int, amount: int) -> None:
        """`amount` counted and known at once: by another process of this machine (told
        directly, not through a shared total), or by this one where there is none."""
        entry = self._entries.get((key, expires))
        if entry is None:
            entry = _Entry()
            self._entries.put((key, expires), entry)
        entry.seen += amount

    def outgoing(self, now: float) -> list[Count]:
        """What the next sync sends: every pending amount (then `sending`), and a zero for
        each entry asked about since, to learn its total; entries of past windows dropped."""
        counts = []
        for pair in self._dirty:
            key, expires = pair
            entry = self._entries.get(pair)
            if entry is None:
                continue
            if expires <= now:
                self._entries.pop(pair)
                continue
            entry.sending, entry.pending = entry.pending, 0
            counts.append(Count(key, expires, entry.sending))
        self._dirty.clear()
        return counts

    def settled(self, counts: Sequence[Count], totals: Sequence[int] | None) -> None:
        """A sync went through: `totals` are the shared totals after it (None: there is no
        shared total, the others were told what was sent)."""
        for index, count in enumerate(counts):
            entry = self._entries.get((count.key, count.expires))
            if entry is None:
                continue
            sent, entry.sending = entry.sending, 0
            if totals is None:
                entry.seen += sent
            else:  # never below what was known: a shared total that lost writes (a failover)
                entry.seen = max(entry.seen + sent, totals[index])

    def unsent(self, counts: Sequence[Count]) -> None:
        """A sync failed: what it carried is pending again, for the next."""
        for count in counts:
            entry = self._entries.get((count.key, count.expires))
            if entry is not None:
                entry.pending += entry.sending
                entry.sending = 0
                self._dirty[count.key, count.expires] = None

    def __len__(self) -> int:
        return len(self._entries)
