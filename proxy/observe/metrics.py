"""Prometheus metrics, served at `/metrics` on the admin listener (`proxy.upstream.health`; off by
default).

Counting costs CPU on every request and prometheus-client costs memory in every worker, so
nothing is counted until `enable()` (the server calls it when `metrics.listen` is set):
`RECORD` is a no-op `Recorder` until then. With several workers, prometheus-client's
multiprocess mode aggregates every worker's values: the supervisor sets
PROMETHEUS_MULTIPROC_DIR before a worker imports prometheus-client.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry, Counter


class Recorder:
    """What the request path reports. This base records nothing."""

    def request(self, action: str, status: int) -> None:
        """One answered request, by action (or endpoint kind) and status."""

    def auth_failure(self, reason: str) -> None:
        """A refused login: `invalid`, `malformed` or `backend_unavailable`."""

    def throttled(self) -> None:
        """A login refused with 429."""

    def upstream_latency(self, seconds: float) -> None:
        """Time from sending a request upstream to its response headers."""

    def transferred(self, received: int, sent: int) -> None:
        """Body bytes of one forwarded request, in from the client and out to it."""

    def cache_hit(self) -> None:
        """A blob existence check answered from the cache."""

    def reloaded(self, ok: bool) -> None:
        """A live reload, applied or refused."""

    def store_up(self, up: bool) -> None:
        """Whether the shared state store (Redis) can be reached."""

    def quarantine_refused(self, kind: str) -> None:
        """A request refused by the quarantine: `manifest`, `tag`, `index` or `blob`."""

    def quarantine_entries(self, count: int) -> None:
        """The quarantined digests in force (the file's and the shared store's)."""

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[None]:
        """Around a request being forwarded."""
        yield


class PrometheusRecorder(Recorder):
    """The metrics README's "Metrics and health" lists, in prometheus-client objects."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._requests = Counter(
            "regproxy_requests_total",
            "Requests answered, by action and status",
            ["action", "status"],
        )
        self._auth_failures = Counter(
            "regproxy_auth_failures_total", "Refused logins, by reason", ["reason"]
        )
        self._throttled = Counter("regproxy_throttled_total", "Login attempts refused with 429")
        self._bytes_in = Counter("regproxy_request_bytes_total", "Body bytes received from clients")
        self._bytes_out = Counter("regproxy_response_bytes_total", "Body bytes sent to clients")
        self._latency = Histogram(
            "regproxy_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._cache_hits = Counter(
            "regproxy_cache_hits_total",
            "Blob existence checks answered from the cache (proxy.cache)",
        )
        self._reloads = Counter("regproxy_reloads_total", "Live reloads, by result", ["result"])
        self._store_up = Gauge(
            "regproxy_store_up",
            "1 while the shared state store (Redis) answers, 0 while this replica is on its own",
            multiprocess_mode="livemin",
        )
        self._quarantine_refused = Counter(
            "regproxy_quarantine_refused_total",
            "Requests refused by the quarantine, by how they reached the digest",
            ["kind"],
        )
        self._quarantine_entries = Gauge(
            "regproxy_quarantine_entries",
            "Quarantined digests in force (the file's and the shared store's)",
            multiprocess_mode="livemax",
        )
        self._in_flight = Gauge(
            "regproxy_inflight_transfers",
            "Requests being forwarded right now",
            multiprocess_mode="livesum",
        )
        # Labelled children are looked up once per label set, not per request.
        self._request_child: Callable[[str, int], Counter] = lru_cache(maxsize=512)(
            lambda action, status: self._requests.labels(action, str(status))
        )

    def request(self, action: str, status: int) -> None:
        self._request_child(action, status).inc()

    def auth_failure(self, reason: str) -> None:
        self._auth_failures.labels(reason).inc()

    def throttled(self) -> None:
        self._throttled.inc()

    def upstream_latency(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def transferred(self, received: int, sent: int) -> None:
        self._bytes_in.inc(received)
        self._bytes_out.inc(sent)

    def cache_hit(self) -> None:
        self._cache_hits.inc()

    def reloaded(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "failed").inc()

    def store_up(self, up: bool) -> None:
        self._store_up.set(1 if up else 0)

    def quarantine_refused(self, kind: str) -> None:
        self._quarantine_refused.labels(kind).inc()

    def quarantine_entries(self, count: int) -> None:
        self._quarantine_entries.set(count)

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[None]:
        with self._in_flight.track_inprogress():
            yield


RECORD: Recorder = Recorder()


def enable() -> None:
    """Start counting (once per process; later calls keep the same metrics)."""
    global RECORD
    if not isinstance(RECORD, PrometheusRecorder):
        RECORD = PrometheusRecorder()


def _registry() -> CollectorRegistry | None:
    from prometheus_client import CollectorRegistry, multiprocess

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None  # the default registry holds this process's metrics
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def metrics(_: web.BaseRequest) -> web.Response:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = _registry()
    body = generate_latest(registry) if registry else generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
