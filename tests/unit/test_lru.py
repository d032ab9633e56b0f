"""The one bounded LRU (proxy.core.lru)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.lru import LRU, Recent


def test_the_least_recently_used_goes_first() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert "b" not in lru and list(lru) == ["a", "c"]


def test_none_is_a_value_like_any_other() -> None:
    lru: LRU[str, int | None] = LRU(2)
    lru.put("gone", None)
    assert "gone" in lru and lru.get("gone", 7) is None and lru.get("other", 7) == 7


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=200))
def test_it_is_a_dict_of_the_most_recent(operations: list[tuple[str, bool]]) -> None:
    """Against a model: puts and gets in order; at most `size` kept, the most recent."""
    size = 3
    lru: LRU[str, int] = LRU(size)
    recent: list[str] = []
    for n, (key, put) in enumerate(operations):
        if put:
            lru.put(key, n)
        elif lru.get(key) is None:
            continue
        recent = [k for k in recent if k != key] + [key]
        recent = recent[-size:]
        assert list(lru) == recent


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=200))
def test_recent_keeps_what_was_used_since_the_last_size_puts_and_hits(
    operations: list[tuple[str, bool]],
) -> None:
    """Against a model: whatever was put or found since the last `size` puts and hits is
    found, with its latest value; never more than twice `size` entries."""
    size = 3
    recent: Recent[str, int] = Recent(size)
    values: dict[str, int] = {}
    touched: list[str] = []  # keys put or found, in order
    fills: list[
        int
    ] = []  # for each put or hit (each may fill the newer generation): len(touched) before it
    for number, (key, put) in enumerate(operations):
        if put:
            fills.append(len(touched))
            recent.put(key, number)
            values[key] = number
            touched.append(key)
        else:
            found = recent.get(key)
            since = fills[-size] if len(fills) >= size else 0
            if key in touched[since:]:
                assert found == values[key]
            if found is not None:
                assert found == values[key]
                fills.append(len(touched))
                touched.append(key)
        assert len(recent) <= 2 * size


def test_recent_kept_makes_a_value_once_while_it_is_kept() -> None:
    recent: Recent[str, list[str]] = Recent(2)
    made: list[str] = []

    def make(key: str) -> list[str]:
        made.append(key)
        return [key]

    first = recent.kept("a", lambda: make("a"))
    assert recent.kept("a", lambda: make("a")) is first and made == ["a"]
    for key in "bcde":  # two generations' worth of other keys: "a" is dropped
        recent.kept(key, lambda key=key: make(key))
    assert recent.kept("a", lambda: make("a")) == ["a"] and made == [*"abcde", "a"]
