"""Window counting (`proxy.core.windows`): a tally's estimate against the truth, for any
interleaving of counts, syncs that go through or fail, and other processes' counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.windows import Count, Tally, window_end


def test_windows_start_at_multiples_of_their_length() -> None:
    assert window_end(0, 60) == 60
    assert window_end(59.999, 60) == 60
    assert window_end(60, 60) == 120
    assert window_end(1_733_500_000.5, 21600) == 1_733_508_000  # 80,255 windows of 6 h


def test_a_tally_counts_at_once_and_learns_the_shared_total() -> None:
    tally = Tally()
    tally.add("k", 60, 3)
    assert tally.used("k", 60) == 3
    sent = tally.outgoing(now=0)
    assert sent == [Count("k", 60, 3)]
    tally.add("k", 60, 1)  # while the sync is under way
    assert tally.used("k", 60) == 4
    tally.settled(sent, [10])  # the others had counted 7
    assert tally.used("k", 60) == 11
    assert tally.outgoing(now=1) == [Count("k", 60, 1)]


def test_a_failed_sync_keeps_its_amounts_for_the_next() -> None:
    tally = Tally()
    tally.add("k", 60, 2)
    sent = tally.outgoing(now=0)
    tally.unsent(sent)
    assert tally.used("k", 60) == 2
    assert tally.outgoing(now=0) == [Count("k", 60, 2)]


def test_entries_of_ended_windows_are_dropped_and_asked_about_entries_refreshed() -> None:
    tally = Tally()
    tally.add("old", 60, 1)
    tally.used("new", 120)
    assert tally.outgoing(now=60) == [Count("new", 120, 0)]  # a zero: learn its total
    assert tally.used("old", 60) == 0 and len(tally) == 2


def test_known_is_the_estimate_without_asking_for_a_refresh() -> None:
    tally = Tally()
    tally.heard("k", 60, 2)
    assert (tally.known("k", 60), tally.known("never", 60)) == (2, 0)
    assert tally.outgoing(now=0) == [] and len(tally) == 1  # nothing to sync, nothing made
    tally.add("k", 60, 1)
    assert tally.known("k", 60) == tally.used("k", 60) == 3


def test_a_shared_total_that_lost_writes_never_lowers_what_is_known() -> None:
    tally = Tally()
    tally.add("k", 60, 5)
    tally.settled(tally.outgoing(0), [5])
    tally.add("k", 60, 1)
    tally.settled(tally.outgoing(0), [1])  # a failover lost the first five
    assert tally.used("k", 60) == 6


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2), st.integers(-3, 10)),
        st.tuples(st.just("other"), st.integers(0, 2), st.integers(0, 10)),
        st.tuples(st.just("sync"), st.integers(0, 2), st.booleans()),
    ),
    max_size=60,
)


@given(steps)
def test_the_estimate_is_own_counts_plus_the_total_last_learned(
    script: list[tuple[str, int, object]],
) -> None:
    """One tally beside other processes sharing a total (Redis): whatever the order of its
    counts (gifts back included), the others' counts, and syncs that go through or fail, its
    estimate is the shared total it last learned plus what it has not yet sent: exact for
    its own counts, behind the truth only by the others' counts since, never counting
    anything twice."""
    tally = Tally()
    shared: dict[str, int] = {}  # the store's totals
    unsent: dict[str, int] = {}  # this tally's counts not yet in the store
    learned: dict[str, int] = {}  # the store's total at this tally's last sync
    for step, which, value in script:
        key = f"k{which}"
        if step == "add":
            assert isinstance(value, int)
            tally.add(key, 60, value)
            unsent[key] = unsent.get(key, 0) + value
        elif step == "other":
            assert isinstance(value, int)
            shared[key] = shared.get(key, 0) + value
        else:
            sent = tally.outgoing(now=0)
            if not value:
                tally.unsent(sent)
                continue
            totals = []
            for count in sent:
                shared[count.key] = shared.get(count.key, 0) + count.amount
                totals.append(shared[count.key])
                learned[count.key], unsent[count.key] = shared[count.key], 0
            tally.settled(sent, totals)
        for n in range(3):  # asking marks every key: each sync refreshes them all
            name = f"k{n}"
            estimate = tally.used(name, 60)
            assert estimate == learned.get(name, 0) + unsent.get(name, 0)
            assert estimate <= shared.get(name, 0) + unsent.get(name, 0)  # never above the truth
