"""The cyclic garbage collector: kept off a large structure while it is built, and young
collections spaced out in a server."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 10_000  # allocations of collectable objects, less frees, between young ones


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off while the block runs (a 10,000-rule ACL or 100,000 users
    otherwise set off full collections, each walking everything made so far: two thirds of
    the time to load them). At the end, what was built goes to the oldest generation as it
    is (`freeze` then `unfreeze` moves every tracked object there and resets the young
    count): otherwise the next allocation would scan every object just made in one pause.
    Nested uses leave it to the outermost."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()


def collect_young_less_often() -> None:
    """Raise the collector's first threshold (700 by default) for a serving process."""
    # A young collection moves what it finds alive a generation up, and what survives two
    # is old: its count sets off the full collections that walk every object, the
    # snapshot's included (10,000 rules, 100,000 users, 1,000 groups). At 700, the
    # objects of the requests in flight (a decision for a caller in many groups makes
    # one per group) are collected young again and again, and full collections follow
    # each other. An object made and freed between two collections cancels out: the
    # count grows with what is alive at once (the requests in flight) and with garbage
    # cycles, which may now wait for up to that many allocations (the request path
    # makes none in its common answers).
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
