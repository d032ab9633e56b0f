"""Blob existence answers (`HEAD /v2/<name>/blobs/<digest>`), remembered for a few seconds.

Docker and podman check every layer with a HEAD before uploading it, and build farms repeat
those checks for the same base layers all day. A blob is content-addressed and the registry
itself marks its answers cacheable for a year (`Cache-Control: max-age=31536000`), so the
proxy may answer a repeated check without the round trip. Kept deliberately narrow:

- only 200 answers: a missing blob is always asked again;
- only requests without a query, conditions or a range; the key is the upstream and the exact
  path, so one repository's answer never serves another (blob links are per repository);
- a DELETE of the blob through the proxy drops the entry in every worker (and every replica
  sharing a store) before the DELETE's answer reaches the client: the event is published
  when the registry's answer arrives, and each worker applies waiting events before it
  answers from memory. Only a blob removed behind the proxy's back (garbage collection, a
  DELETE sent to the registry directly) is still claimed, for at most `cache.ttl` seconds;
- authorization is decided on every request before the cache is consulted.

Deciding what may be stored is pure (`freshness`, `cache_key`); `HeadCache` is a bounded LRU;
`CachedHeads` is the guard that answers from it, stores and forgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from ..core.lru import LRU
from ..http import web
from ..http.routes import Operation
from ..observe import metrics
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..state.events import BlobGone, Event
from ..state.store import Store
from ..upstream.forward import Answer

ENTRIES = 4096  # about 1 KiB each
# Request headers that make an answer depend on more than the path.
_CONDITIONAL = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "Range")
# Never replayed to another client: per-response or per-connection.
_NOT_STORED = frozenset({"date", "age", "set-cookie"})


def cache_key(
    method: str,
    operation: Operation,
    upstream: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
) -> str | None:
    """The key a request's answer may be cached and looked up under, or None."""
    if method != "HEAD" or operation.kind != "blob" or query:
        return None
    if any(name in headers for name in _CONDITIONAL):
        return None
    return upstream + path


def blob_key(operation: Operation, upstream: str, path: str) -> str | None:
    """The entry a request invalidates when it succeeds upstream (a blob DELETE)."""
    return upstream + path if operation.kind == "blob" and operation.action == "delete" else None


def freshness(cache_control: str, ttl: float) -> float:
    """Seconds an answer may be reused, per RFC 9111 for a shared cache, at most `ttl`:
    0 unless the upstream gives `max-age` or `s-maxage` and nothing forbids storing."""
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if directives.keys() & {"no-store", "no-cache", "private"}:
        return 0.0
    raw = directives.get("s-maxage", directives.get("max-age", ""))
    if not raw.isdigit():
        return 0.0
    return float(min(int(raw), ttl))


@dataclass(frozen=True)
class Entry:
    headers: tuple[tuple[str, str], ...]  # as sent to the client, without Date and Age
    stored: float
    expires: float


class HeadCache:
    """Answers to blob HEADs, the least recently used dropped past `size`; one per worker."""

    def __init__(self, size: int = ENTRIES) -> None:
        self._entries: LRU[str, Entry] = LRU(size)

    def get(self, key: str, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            self._entries.pop(key)
            return None
        return entry

    def put(self, key: str, headers: Mapping[str, str], lifetime: float, now: float) -> None:
        if lifetime <= 0 or "Vary" in headers or "Location" in headers:
            return
        kept = tuple((k, v) for k, v in headers.items() if k.lower() not in _NOT_STORED)
        self._entries.put(key, Entry(kept, now, now + lifetime))

    def drop(self, key: str) -> None:
        self._entries.pop(key)

    def __len__(self) -> int:
        return len(self._entries)


class CachedHeads(Guard):
    """The last guard: blob existence answers remembered for `cache.ttl` seconds, and forgotten
    in every worker when the blob is deleted through the proxy."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._heads = HeadCache()
        store.subscribe(self._apply)

    def _apply(self, event: Event, _age: float) -> None:
        if isinstance(event, BlobGone):
            self._heads.drop(event.key)

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        key = self._key(ctx)
        if key is None:
            return None
        self._store.sync()  # a DELETE another worker just forwarded is applied first
        now = self._clock()
        entry = self._heads.get(key, now)
        if entry is None:
            return None
        metrics.RECORD.cache_hit()
        response = web.StreamResponse(headers=CIMultiDict(entry.headers))
        response.headers["Age"] = str(int(now - entry.stored))
        await response.prepare(ctx.request)
        await response.write_eof()
        return response

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        assert ctx.operation is not None and ctx.route is not None
        path = ctx.route.raw_path.partition("?")[0]
        gone = blob_key(ctx.operation, ctx.route.upstream, path)
        if gone is not None:  # published before the DELETE's answer reaches its client
            self._heads.drop(gone)
            self._store.publish(BlobGone(gone))
            return None
        key = self._key(ctx)
        if key is not None and answer.status == 200:
            lifetime = freshness(answer.headers.get("Cache-Control", ""), ctx.config.cache_ttl)
            self._heads.put(key, answer.headers, lifetime, self._clock())
        return None

    @staticmethod
    def _key(ctx: RequestContext) -> str | None:
        """The entry the request's answer is kept under, when it may be cached at all."""
        if ctx.config.cache_ttl <= 0:
            return None
        assert ctx.operation is not None and ctx.route is not None
        path, _, query = ctx.route.raw_path.partition("?")
        request = ctx.request
        return cache_key(request.method, ctx.operation, ctx.route.upstream, path, query,
                         request.headers)  # fmt: skip
