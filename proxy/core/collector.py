"""Building a large structure without the cyclic garbage collector walking it meanwhile."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
