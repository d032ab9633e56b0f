"""Pings answered locally while the registry is known to be up.

Every docker or podman command starts with `GET /v2/`. While an upstream has answered one
with 200 in the last PING_FRESH seconds, an authenticated ping is answered without a round
trip (anonymous pings never get this far: they are always challenged).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..http import web
from ..http.errors import ping_response
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..upstream.forward import Answer

PING_FRESH = 5.0  # seconds a successful upstream ping lets the proxy answer pings itself


class FreshPings(Guard):
    """Ping freshness per upstream (one per worker)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}  # upstream -> when it last answered a ping

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        assert ctx.operation is not None and ctx.route is not None
        if ctx.operation.kind != "ping":
            return None
        seen = self._seen.get(ctx.route.upstream)
        return ping_response() if seen is not None and self._clock() - seen < PING_FRESH else None

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        assert ctx.route is not None
        if ctx.route.raw_path == "/v2/" and answer.status == 200:  # a fresh sign of life
            self._seen[ctx.route.upstream] = self._clock()
        return None
