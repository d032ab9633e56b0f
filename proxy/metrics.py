"""Prometheus metrics and the health answer, on their own listener (off by default).

With several workers, prometheus-client's multiprocess mode aggregates every worker's
values: the CLI sets PROMETHEUS_MULTIPROC_DIR before this module is imported.
"""

from __future__ import annotations

import os
from functools import lru_cache

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "regproxy_requests_total", "Requests answered, by action and status", ["action", "status"]
)
AUTH_FAILURES = Counter("regproxy_auth_failures_total", "Refused logins, by reason", ["reason"])
THROTTLED = Counter("regproxy_throttled_total", "Login attempts refused with 429")
BYTES_IN = Counter("regproxy_request_bytes_total", "Body bytes received from clients")
BYTES_OUT = Counter("regproxy_response_bytes_total", "Body bytes sent to clients")
UPSTREAM_LATENCY = Histogram(
    "regproxy_upstream_latency_seconds",
    "Time from sending a request upstream to its response headers",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CACHE_HITS = Counter(
    "regproxy_cache_hits_total", "Blob existence checks answered from the cache (proxy.cache)"
)
RELOADS = Counter("regproxy_reloads_total", "Live reloads, by result", ["result"])
IN_FLIGHT = Gauge(
    "regproxy_inflight_transfers",
    "Requests being forwarded right now",
    multiprocess_mode="livesum",
)


@lru_cache(maxsize=512)
def _requests(action: str, status: int) -> Counter:
    return REQUESTS.labels(action, str(status))


def count_request(action: str, status: int) -> None:
    """One answered request; the labelled child is looked up once per (action, status)."""
    _requests(action, status).inc()


def _registry() -> CollectorRegistry | None:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None  # the default registry holds this process's metrics
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def metrics(_: web.BaseRequest) -> web.Response:
    registry = _registry()
    body = generate_latest(registry) if registry else generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
