"""Prometheus metrics, served at `/metrics` on the admin listener (`proxy.upstream.health`; off by
default).

Counting costs CPU on every request and prometheus-client costs memory in every worker, so
nothing is counted until `enable()` (the server calls it when `metrics.listen` is set):
`RECORD` is a no-op `Recorder` until then. With several workers, prometheus-client's
multiprocess mode aggregates every worker's values: worker 0 sets
PROMETHEUS_MULTIPROC_DIR before any worker imports prometheus-client.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

    from ..http import web

# The fair-share caps a request can be refused by (README "Operating safely"): the 429s
# before forwarding, and the 503 of a request that found no upstream connection in time.
FairShareLimit = Literal[
    "per_address", "per_user", "anonymous", "anonymous_per_address", "upstream_wait"
]
FAIR_SHARE_LIMITS: tuple[FairShareLimit, ...] = get_args(FairShareLimit)


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

    def rate_limited(self, budget: str) -> None:
        """A request refused with 429: its budget (`users/manifest_pulls`) is spent."""

    def rate_limit_budgets(self, budgets: Iterable[str]) -> None:
        """The configured budgets, each counted from 0."""

    def rate_limit_sync_failed(self) -> None:
        """Rate-limit counts could not be shared (the state store is away): counted here."""

    def upstream_up(self, up: bool) -> None:
        """Whether the upstream answered its last probe (a scrape or a health check)."""

    def fair_share_refused(self, limit: FairShareLimit) -> None:
        """A request refused by a fair-share cap, named by its `limits.` key."""

    def certificate_expires(self, timestamp: float) -> None:
        """The served certificate's end of validity (UNIX time), once loaded."""

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
        self._fair_share = Counter(
            "regproxy_fair_share_refused_total",
            "Requests refused by a fair-share cap, by its limits. key",
            ["limit"],
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
        self._upstream_up = Gauge(
            "regproxy_upstream_up",
            "1 if the upstream answered /v2/ at the last scrape or health check, else 0",
            multiprocess_mode="livemostrecent",
        )
        self._certificate_expiry = Gauge(
            "regproxy_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (UNIX time)",
            multiprocess_mode="livemin",  # a worker still on the old certificate counts
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
        self._rate_limited = Counter(
            "regproxy_rate_limited_total",
            "Requests refused with 429 because a rate-limit budget was spent, by budget",
            ["budget"],
        )
        self._rate_sync_failures = Counter(
            "regproxy_rate_limit_sync_failures_total",
            "Syncs of rate-limit counts with the state store that failed (counted locally)",
        )
        # Known label values start at 0: a first failure is then an increase() an alert sees,
        # and the series are there for every worker (multiprocess mode shows only those).
        for reason in ("invalid", "malformed", "backend_unavailable"):
            self._auth_failures.labels(reason)
        for result in ("ok", "failed"):
            self._reloads.labels(result)
        for limit in FAIR_SHARE_LIMITS:
            self._fair_share.labels(limit)
        for kind in ("manifest", "tag", "index", "blob"):
            self._quarantine_refused.labels(kind)
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

    def upstream_up(self, up: bool) -> None:
        self._upstream_up.set(1 if up else 0)

    def fair_share_refused(self, limit: FairShareLimit) -> None:
        self._fair_share.labels(limit).inc()

    def certificate_expires(self, timestamp: float) -> None:
        self._certificate_expiry.set(timestamp)

    def rate_limited(self, budget: str) -> None:
        self._rate_limited.labels(budget).inc()

    def rate_limit_budgets(self, budgets: Iterable[str]) -> None:
        for budget in budgets:
            self._rate_limited.labels(budget)

    def rate_limit_sync_failed(self) -> None:
        self._rate_sync_failures.inc()

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
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from ..http import web

    registry = _registry()
    body = generate_latest(registry) if registry else generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
