"""Guards: the steps between authorization and the registry, each one module, in one list."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..pipeline.guard import Guard
from ..state.store import Store
from ..upstream.catalog import Listings
from ..upstream.client import Registry
from ..upstream.manifests import new_contents
from .headcache import CachedHeads
from .listings import NewRepositories
from .pings import FreshPings
from .quarantine import Quarantined
from .ratelimit import RateLimits
from .tags import TagGuard
from .uploads import UploadBinding


def ordered(
    store: Store,
    registry: Registry,
    upload_key: bytes,
    listings: Listings,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Guard, ...]:
    """Every guard, in the order a request meets them (and its answer, on the way back)."""
    contents = new_contents()  # what manifests hold, read once for every guard that looks
    return (
        Quarantined(store, registry, contents, clock),  # first: wins over everything after
        UploadBinding(upload_key),  # an upload only by whoever started it
        TagGuard(store, registry, contents),  # immutable tags, protected deletes
        RateLimits(store),  # budgets per identity and window: after what refuses for free
        FreshPings(clock),  # pings answered while the registry is known to be up
        NewRepositories(store, listings),  # a push's new repository in the catalog at once
        CachedHeads(store, clock),  # blob existence answers it remembers: last of all
    )
