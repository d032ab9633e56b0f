"""Quarantine on the request path: no request reaches a quarantined digest, whatever allowed it.

The entries in force are the quarantine file's (`Snapshot.quarantine`, reloaded within a
second of an edit) merged with the shared store's (`quarantine` hash in Redis, polled by every
worker: `proxy.state.shared`). With none, this guard costs a request nothing. With some:

- before forwarding: a manifest or blob by a quarantined digest, with any method, is refused;
  so is a blob that a quarantined image lists as a layer or config (its entry may say
  `blobs: false`). What an image lists is recorded with its entry by `regproxy quarantine
  add` (so every worker knows it without asking); for an entry without that record
  (written by hand), it is read from the manifest's bytes, fetched from the
  registry with the proxy's own requests the first time (single flight per repository and
  digest; the contents are remembered by digest, `proxy.upstream.manifests`; a repository that
  does not have the image is asked again after ABSENT_TTL);
- on the registry's answer to a manifest GET or HEAD, before any byte of it is sent: the
  digest the answer names (`Docker-Content-Digest`) and, for a GET, the digest of the bytes
  read, and every manifest nested in it (an index, read from bytes: the answer's own, then
  the nested ones fetched by digest, bounded). A tag that names a quarantined image, or an
  index that holds one, is refused.

Refusals are 403 DENIED with the entry's reason, audited and counted. A registry that cannot
be asked while the guard must look is a 503, never a pass. It runs first of all guards, so no
answer a later guard remembers (blob existence) can be given for a quarantined digest.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from ..core.flight import SingleFlight
from ..core.lru import LRU
from ..http import web
from ..http.bodies import TooLarge
from ..http.errors import error_response
from ..http.routes import DIGEST_RE, Operation, query_pairs
from ..observe import metrics
from ..observe.audit import audit_quarantine
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..policy.quarantine import NO_QUARANTINE, Quarantine, Refused, answered, listed, requested
from ..policy.quarantinefile import parse_shared
from ..state.store import Store
from ..upstream.client import Registry
from ..upstream.forward import Answer
from ..upstream.manifests import (
    HASHES,
    MAX_MANIFEST,
    Asker,
    Contents,
    TooMuch,
    Unavailable,
    digest_of,
    usable_digest,
)

log = logging.getLogger("regproxy.quarantine")

ABSENT_TTL = 1.0  # seconds a repository's "no such manifest" is believed for its blobs
ABSENT = 4096  # (repository, digest) pairs remembered as absent
RETRY_AFTER = {"Retry-After": "5"}
MAX_ETAGS = 8  # digests of one If-None-Match looked into
Where = tuple[str, str, str]  # upstream, repository, digest


class Quarantined(Guard):
    """The quarantine, applied before forwarding and on manifest answers; one per worker."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        contents: LRU[str, Contents],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = store.shared_map("quarantine")
        self._registry = registry
        self._contents = contents
        self._clock = clock
        self._absent: LRU[Where, float] = LRU(ABSENT)  # until when
        self._learning: SingleFlight[Where, frozenset[str] | None] = SingleFlight()
        self._merged: tuple[Quarantine, int, Quarantine] = (NO_QUARANTINE, 0, NO_QUARANTINE)

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        quarantine = await self._in_force(ctx)
        if not quarantine:
            return None
        operation = _reads(ctx)
        refused = requested(quarantine, operation)
        blob, repository = operation.reference, operation.repository or ""
        if refused is None and operation.kind == "blob" and blob and DIGEST_RE.fullmatch(blob):
            refused = listed(quarantine, blob, {})  # the blobs recorded with the entries
            try:
                if refused is None and quarantine.to_learn():
                    blobs_of = await self._blobs_of(ctx, repository, quarantine)
                    refused = listed(quarantine, blob, blobs_of)
            except (Unavailable, TooMuch) as exc:
                return self._cannot_tell(ctx, exc)
        return self._refuse(ctx, refused) if refused is not None else None

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        operation = ctx.operation
        assert operation is not None
        if operation.kind != "manifest" or ctx.request.method not in ("GET", "HEAD"):
            return None
        quarantine = await self._in_force(ctx)
        if not quarantine:
            return None
        try:
            async with asyncio.timeout(_patience(ctx)):
                digests, held = await self._looked_into(ctx, answer)
        except TimeoutError:
            return self._cannot_tell(ctx, Unavailable("timed out"))
        except (Unavailable, TooMuch) as exc:
            return self._cannot_tell(ctx, exc)
        refused = answered(quarantine, operation, digests, held)
        return self._refuse(ctx, refused) if refused is not None else None

    async def _in_force(self, ctx: RequestContext) -> Quarantine:
        """The file's entries merged with the shared store's (rebuilt only when either
        changes)."""
        local = ctx.snapshot.quarantine
        fields = await self._shared.current() if self._shared is not None else {}
        generation = self._shared.generation if self._shared is not None else 0
        seen, seen_generation, merged = self._merged
        if seen is not local or seen_generation != generation:
            shared, problems = parse_shared(fields)
            for problem in problems:
                log.warning("%s", problem)
            merged = local.merged(shared)
            self._merged = (local, generation, merged)
            metrics.RECORD.quarantine_entries(len(merged))
        return merged

    async def _looked_into(
        self, ctx: RequestContext, answer: Answer
    ) -> tuple[set[str], frozenset[str]]:
        """The digests naming what was answered, and every manifest nested in it."""
        assert ctx.operation is not None and ctx.operation.repository is not None
        repository, reference = ctx.operation.repository, ctx.operation.reference or ""
        named = answer.headers.get("Docker-Content-Digest", "")
        digests = {named} if usable_digest(named) else set()
        ask = self._asker(ctx)
        if answer.status == 304:  # the client keeps what it holds: what its etags name
            kept: set[str] = set()
            for etag in _etags(ctx)[:MAX_ETAGS]:
                digests.add(etag)
                kept |= await _held(ask, repository, etag)
            return digests, frozenset(kept)
        if answer.status != 200:
            return digests, frozenset()  # nothing to look into
        if ctx.request.method == "GET":
            try:
                body = await answer.read(MAX_MANIFEST)
            except TooLarge as exc:
                raise Unavailable(f"manifest answer: {exc}") from None
            top = digest_of(body, named.partition(":")[0] if digests else "sha256")
            ask.remember(top, body)
            # Every algorithm's digest of the bytes: an answer naming sha512 (or lying) must
            # not hide the bytes of a sha256 entry, nor the other way round.
            digests.update(digest_of(body, algorithm) for algorithm in HASHES)
        else:  # a HEAD: the named digest, or (none usable) the digest of what a GET answers
            top = named if digests else await ask.current(repository, reference) or ""
            if not top:
                return digests, frozenset()
        digests.add(top)
        return digests, await _held(ask, repository, top)

    async def _blobs_of(
        self, ctx: RequestContext, repository: str, quarantine: Quarantine
    ) -> dict[str, frozenset[str]]:
        """The blobs of each quarantined image whose blobs are refused but not recorded, as far
        as they can be known in `repository`."""
        assert ctx.route is not None
        upstream = ctx.route.upstream
        ask = self._asker(ctx)
        found: dict[str, frozenset[str]] = {}
        async with asyncio.timeout(_patience(ctx)):
            for entry in quarantine.to_learn():
                where = (upstream, repository, entry.digest)
                until = self._absent.get(where)
                if until is not None and until > self._clock():
                    continue
                learn = functools.partial(ask.blobs, repository, entry.digest)
                blobs = await self._learning.join(where, learn)
                if blobs is None:
                    self._absent.put(where, self._clock() + ABSENT_TTL)
                else:
                    found[entry.digest] = blobs
        return found

    def _asker(self, ctx: RequestContext) -> Asker:
        assert ctx.route is not None
        timeouts = ctx.config.timeouts
        return Asker(self._registry, ctx.route, ctx.request.host, timeouts, self._contents)

    @staticmethod
    def _refuse(ctx: RequestContext, refused: Refused) -> web.StreamResponse:
        assert ctx.operation is not None and ctx.route is not None
        log.info("refused %s %s for %s: %s", ctx.request.method, ctx.route.raw_path,
                 ctx.user or "-", refused.message)  # fmt: skip
        metrics.RECORD.quarantine_refused(refused.kind)
        if ctx.identity is not None:
            audit_quarantine(ctx.identity, ctx.operation, ctx.request.method, refused)
        return error_response(403, "DENIED", refused.message)

    @staticmethod
    def _cannot_tell(ctx: RequestContext, exc: Exception) -> web.StreamResponse:
        assert ctx.route is not None
        log.warning("%s %s refused: the quarantine check failed: %s", ctx.request.method,
                    ctx.route.raw_path, exc)  # fmt: skip
        if isinstance(exc, TooMuch):
            return error_response(403, "DENIED", f"{exc}: it may hold a quarantined digest")
        message = "registry unavailable for the quarantine check, retry later"
        return error_response(503, "UNAVAILABLE", message, RETRY_AFTER)


def _reads(ctx: RequestContext) -> Operation:
    """What the request reads: a cross-repository mount reads its blob from `from` (the
    query forwarded, so a mount the policy dropped reads nothing)."""
    operation = ctx.operation
    assert operation is not None and ctx.route is not None
    if operation.kind != "upload-start" or operation.mount_from is None:
        return operation
    mount = dict(query_pairs(ctx.route.raw_path.partition("?")[2]) or []).get("mount")
    return replace(operation, kind="blob", repository=operation.mount_from, reference=mount)


async def _held(ask: Asker, repository: str, digest: str) -> frozenset[str]:
    held = await ask.held(repository, digest)
    if held is None:
        raise TooMuch(f"{digest} nests too many manifests to look into")
    return held


def _etags(ctx: RequestContext) -> list[str]:
    """The digests a conditional request's If-None-Match names (registries' etags are
    quoted digests)."""
    values = ctx.request.headers.getall("If-None-Match", [])
    tags = (t.strip().removeprefix("W/").strip('"') for v in values for t in v.split(","))
    return [t for t in tags if usable_digest(t)]


def _patience(ctx: RequestContext) -> float:
    """How long one check may ask the registry."""
    timeouts = ctx.config.timeouts
    return timeouts.connect + timeouts.read
