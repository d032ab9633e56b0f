"""What the proxy knows of its registries' health: for answering pings itself, and `/health`.

Every docker or podman command starts with `GET /v2/`. While an upstream has answered one
with 200 in the last PING_FRESH seconds, an authenticated ping is answered locally, without a
round trip. `/health` asks the default upstream each time.

The admin listener (`metrics.listen`) answers `/metrics`, `/health` (ready: the upstream
answers) and `/live` (the worker's event loop runs).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from ..conf.config import Config
from ..core.limits import Timeouts
from ..observe import metrics
from ..state.store import Store

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


AdminHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def admin_handler(
    session: aiohttp.ClientSession, current: Callable[[], Config], store: Store
) -> AdminHandler:
    """The admin listener's requests: `/metrics`, `/health` (against the configuration in
    force, `current()`), `/live`; GET and HEAD only."""
    shared = current().state.backend != "local"  # restart-only

    async def health(_: web.BaseRequest) -> web.Response:
        config = current()
        ok = await probe(session, config.upstream, config.timeouts)
        status = "ok" if ok else "upstream unavailable"
        body = {"status": status, "upstream": config.upstream}
        if shared:  # Redis away: still ready (local state), but say so
            body["store"] = "ok" if store.healthy else "degraded"
            body["status"] = "degraded" if ok and not store.healthy else status
        return web.json_response(body, status=200 if ok else 503)

    async def live(_: web.BaseRequest) -> web.Response:
        # Answered while this worker's event loop runs, whatever the upstream does: a
        # liveness probe must not restart the proxy because the registry is down.
        return web.json_response({"status": "ok"})

    routes: dict[str, AdminHandler] = {
        "/metrics": metrics.metrics,
        "/health": health,
        "/live": live,
    }

    async def admin(request: web.BaseRequest) -> web.StreamResponse:
        handler = routes.get(request.path)
        if handler is None or request.method not in ("GET", "HEAD"):
            return web.Response(status=404, text="not found\n")
        return await handler(request)

    return admin
