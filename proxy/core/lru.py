"""A mapping that keeps at most `size` entries, dropping the least recently used."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Bounded by entries; `get` and `put` make an entry the most recently used."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        try:
            self._entries.move_to_end(key)
        except KeyError:
            return default
        return self._entries[key]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first."""
        return iter(self._entries)


_MISSING = object()


class Recent(Generic[K, V]):
    """Bounded like `LRU`, cheaper per hit (one dict lookup): the entries put or found since
    the last `size` puts and hits are kept, and at most `2 * size` entries are."""

    # Two generations: a hit in the older one moves the entry into the newer one (so a hit
    # can fill the newer one as a put does); when the newer one is full, it becomes the older
    # one and the older one is dropped whole.
    def __init__(self, size: int) -> None:
        self.size = size
        self._new: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._new.get(key, _MISSING)
        if value is _MISSING:
            value = self._old.pop(key, _MISSING)
            if value is _MISSING:
                return default
            self.put(key, value)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    def kept(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for `key`; else `make()`'s, kept from now on (never None)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        if len(self._new) >= self.size and key not in self._new:
            self._old, self._new = self._new, {}
        self._new[key] = value

    def __len__(self) -> int:
        return len(self._new) + len(self._old)
