"""The admin listener (`metrics.listen`): `/metrics` (the upstream probed first), `/health`
(ready: the upstream answers and the replica is not stopping) and `/live` (the event loop runs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from ..conf.config import Config
from ..core.limits import Timeouts
from ..http import web
from ..observe import metrics
from ..state.store import Store
from .client import Registry, UpstreamError


async def probe(registry: Registry, upstream: str, timeouts: Timeouts) -> bool:
    """Whether the upstream answers `/v2/` at all (any status below 500), within 5 seconds;
    the answer goes to the `regproxy_upstream_up` metric too."""
    quick = replace(timeouts, read=min(5.0, timeouts.connect + timeouts.read))
    try:
        async with registry.request("GET", f"{upstream}/v2/", timeouts=quick) as response:
            up = response.status < 500
    except UpstreamError:
        up = False
    metrics.RECORD.upstream_up(up)
    return up


AdminHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def admin_handler(
    registry: Registry, current: Callable[[], Config], store: Store, draining: Callable[[], bool]
) -> AdminHandler:
    """The admin listener's requests: `/metrics`, `/health` (against the configuration in
    force, `current()`; 503 "draining" once `draining()`), `/live`; GET and HEAD only."""
    shared = current().state.backend != "local"  # restart-only

    async def health(_: web.BaseRequest) -> web.Response:
        config = current()
        if draining():  # stopping: out of the load balancer first, while it still serves
            return web.json_response(
                {"status": "draining", "upstream": config.upstream}, status=503
            )
        ok = await probe(registry, config.upstream, config.timeouts)
        status = "ok" if ok else "upstream unavailable"
        body = {"status": status, "upstream": config.upstream}
        if shared:  # Redis away: still ready (local state), but say so
            body["store"] = "ok" if store.healthy else "degraded"
            body["status"] = "degraded" if ok and not store.healthy else status
            if config.rate_limits is not None:  # Redis away: each worker counts alone
                body["rate_limits"] = "shared" if store.healthy else "local"
        return web.json_response(body, status=200 if ok else 503)

    async def scraped(request: web.BaseRequest) -> web.Response:
        # Probed at each scrape: the upstream's state is then as fresh as the scrape, with no
        # traffic too, and a replica that cannot reach it says so whatever its load balancer asks.
        config = current()
        await probe(registry, config.upstream, config.timeouts)
        return await metrics.metrics(request)

    async def live(_: web.BaseRequest) -> web.Response:
        # Answered while this worker's event loop runs, whatever the upstream does, draining
        # too: a liveness probe must not restart the proxy because the registry is down, or
        # kill it while it finishes its requests.
        return web.json_response({"status": "ok"})

    routes: dict[str, AdminHandler] = {
        "/metrics": scraped,
        "/health": health,
        "/live": live,
    }

    async def admin(request: web.BaseRequest) -> web.StreamResponse:
        handler = routes.get(request.path)
        if handler is None or request.method not in ("GET", "HEAD"):
            return web.Response(status=404, text="not found\n")
        return await handler(request)

    return admin
