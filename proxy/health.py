"""What the proxy knows of its registries' health: for answering pings itself, and `/health`.

Every docker or podman command starts with `GET /v2/`. While an upstream has answered one
with 200 in the last PING_FRESH seconds, an authenticated ping is answered locally, without a
round trip. `/health` asks the default upstream each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp

from .limits import Timeouts

PING_FRESH = 5.0  # seconds a successful upstream ping lets the proxy answer pings itself


class Health:
    """Ping freshness per upstream (one per worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}  # upstream -> when it last answered a ping

    def answered(self, upstream: str, raw_path: str, status: int) -> None:
        """Note an upstream answer; a 200 to `/v2/` is a fresh sign of life."""
        if raw_path == "/v2/" and status == 200:
            self._seen[upstream] = self._clock()

    def answers_pings(self, upstream: str) -> bool:
        seen = self._seen.get(upstream)
        return seen is not None and self._clock() - seen < PING_FRESH


async def probe(session: aiohttp.ClientSession, upstream: str, timeouts: Timeouts) -> bool:
    """Whether the upstream answers `/v2/` at all (any status below 500)."""
    timeout = aiohttp.ClientTimeout(total=min(5.0, timeouts.connect + timeouts.read))
    try:
        async with session.get(f"{upstream}/v2/", timeout=timeout) as response:
            return response.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False
