"""Immutable tags and protected deletes on the request path: the registry is asked before a
guarded manifest PUT or DELETE is forwarded.

`proxy.policy.tagrules.plan` says what a request must pass; this step asks the registry, with the
proxy's own requests (accepting every manifest media type):

- a PUT by a tag an immutable rule guards: the manifest is read whole (it is small: at most
  MAX_MANIFEST, the registry's own limit), its digest computed, and the tag looked up (`HEAD`).
  A tag that names another manifest is refused with 403 DENIED naming the rule; an absent tag,
  or one naming this very manifest (clients retry pushes), lets the exact bytes read go on;
- a DELETE by digest where tags are guarded: the tag list (bounded), then a `HEAD` of each
  guarded tag (bounded, a few at a time), and the manifests an index tag holds, through the
  indexes nested in it too (bounded). A digest that a guarded tag names, directly or through
  its index, is refused.

Manifests held in memory at once are bounded per worker (MANIFEST_BUDGET): beyond it, a push
is told to retry (503), so no number of large manifests at once can exhaust memory. Check and
forward run under one lock per repository (`Store.lock`: across workers, and across
replicas with a shared store), so two pushes of one new tag cannot both find it absent, nor can
a delete race a push. A registry that cannot answer the check is a refusal (503), never a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..conf.config import Config
from ..core.lru import LRU
from ..http import web
from ..http.errors import error_response
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..policy.tagrules import Denied, Overwrite, Pointers, TagRule, plan
from ..state.store import LockTimeout, Store
from ..upstream.client import Registry
from ..upstream.forward import ClientStalled, closing, paced_body
from ..upstream.manifests import (
    MAX_MANIFEST,
    MAX_NESTED,
    Asker,
    Contents,
    TooMuch,
    Unavailable,
    digest_of,
)

log = logging.getLogger("regproxy.tags")

MANIFEST_BUDGET = 64 * 1024 * 1024  # bytes of manifests one worker holds at once
MANIFEST_SHARE = 2 * MAX_MANIFEST  # of which one user (or anonymous address) holds at most
MAX_GUARDED = 1000  # guarded tags looked up before a delete by digest; more: refused
CONCURRENT_LOOKUPS = 8
RETRY_AFTER = {"Retry-After": "5"}


class Budget:
    """Bytes held in memory by the requests under way, bounded, and bounded per owner (a
    user, or an anonymous address) to `share`: one caller's stalled pushes cannot take the
    budget from everyone else."""

    def __init__(self, limit: int, share: int) -> None:
        self._limit, self._share = limit, share
        self._used = 0
        self._by_owner: dict[str, int] = {}

    def reserve(self, owner: str) -> Reservation:
        """A reservation to take bytes under; give them back with `release`."""
        return Reservation(self, owner)

    def _take(self, owner: str, size: int) -> bool:
        held = self._by_owner.get(owner, 0)
        if self._used + size > self._limit or held + size > self._share:
            return False
        self._used += size
        self._by_owner[owner] = held + size
        return True

    def _give_back(self, owner: str, size: int) -> None:
        self._used -= size
        held = self._by_owner.pop(owner) - size
        if held:
            self._by_owner[owner] = held


class Reservation:
    """The bytes one request holds of a Budget."""

    def __init__(self, budget: Budget, owner: str) -> None:
        self._budget, self._owner = budget, owner
        self._taken = 0

    def take(self, size: int) -> bool:
        """Reserve `size` more bytes; False (nothing taken) when over the budget or the
        owner's share of it."""
        if not self._budget._take(self._owner, size):
            return False
        self._taken += size
        return True

    def release(self) -> None:
        if self._taken:
            self._budget._give_back(self._owner, self._taken)
            self._taken = 0


class TagGuard(Guard):
    """Immutable tags and protected deletes: the registry asked before a guarded manifest PUT
    or DELETE is forwarded, under the repository's lock; one per worker."""

    def __init__(self, store: Store, registry: Registry, contents: LRU[str, Contents]) -> None:
        self._store = store
        self._registry = registry
        self._budget = Budget(MANIFEST_BUDGET, MANIFEST_SHARE)
        self._contents = contents  # what each manifest holds (proxy.upstream.manifests)

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        operation, route, request = ctx.operation, ctx.route, ctx.request
        assert operation is not None and route is not None
        check = plan(ctx.config.tag_rules, operation)
        if check is None:
            return None
        if isinstance(check, Denied):
            log.info("refused %s %s: %s", request.method, route.raw_path, check.message)
            return error_response(403, "DENIED", check.message)
        if isinstance(check, Overwrite):
            reservation = self._budget.reserve(ctx.owner)
            ctx.defer(reservation.release)  # held until the manifest is forwarded
            limits, timeouts = ctx.config.limits, ctx.config.timeouts
            read = await _read_manifest(request, timeouts.client_idle, limits.min_rate,
                                        reservation)  # fmt: skip
            if isinstance(read, web.StreamResponse):
                return read
            ctx.body = read
        try:
            await ctx.hold(self._locked(route.upstream, check.repository, ctx.config))
            refusal = await self._check(ctx, check)
        except LockTimeout:
            log.warning("%s %s: the repository stayed locked", request.method, route.raw_path)
            return error_response(503, "UNAVAILABLE", "tag check busy, retry later", RETRY_AFTER)
        except Unavailable as exc:
            log.warning("%s %s refused: tag check failed: %s", request.method, route.raw_path, exc)
            message = "registry unavailable for the tag check, retry later"
            return error_response(503, "UNAVAILABLE", message, RETRY_AFTER)
        if refusal is not None:
            log.info("refused %s %s: %s", request.method, route.raw_path, refusal)
            return error_response(403, "DENIED", refusal)
        return None

    def _locked(
        self, upstream: str, repository: str, config: Config
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """One lock per repository, held across check and forward. A holder that dies frees
        it after `ttl`: longer than the check (bounded below) plus the forward."""
        t = config.timeouts
        ttl = 2 * (t.connect + t.read) + t.client_idle + config.limits.upstream_wait
        return self._store.lock(f"tags {upstream} {repository}", ttl, config.limits.upstream_wait)

    async def _check(self, ctx: RequestContext, check: Overwrite | Pointers) -> str | None:
        """Why the request is refused, or None; Unavailable when the registry cannot say."""
        assert ctx.route is not None
        timeouts = ctx.config.timeouts
        ask = Asker(self._registry, ctx.route, ctx.request.host, timeouts, self._contents)
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.read):
                if isinstance(check, Overwrite):
                    assert ctx.body is not None
                    return await _overwrite(ask, check, ctx.body)
                return await _pointed_at(ask, check)
        except TimeoutError:
            raise Unavailable("timed out") from None
        except TooMuch as exc:
            return f"{exc}: deletes are refused"


async def _overwrite(ask: Asker, check: Overwrite, body: bytes) -> str | None:
    current = await ask.current(check.repository, check.tag)
    if current is None:
        return None
    pushed = digest_of(body, current.partition(":")[0])
    if pushed == current:
        return None
    return (
        f"tag {check.tag} is immutable (rule {check.rule.label}): {check.repository}:{check.tag}"
        f" is {current}, this push is {pushed}"
    )


async def _pointed_at(ask: Asker, check: Pointers) -> str | None:
    """Why the delete is refused: a guarded tag names `check.digest` (directly, or in its
    index); None when none does."""
    guarded: list[tuple[str, TagRule]] = []
    for tag in await ask.tags(check.repository):
        rule = check.guarding(tag)
        if rule is not None:
            guarded.append((tag, rule))
    if len(guarded) > MAX_GUARDED:
        return f"over {MAX_GUARDED} guarded tags in {check.repository}: deletes are refused"
    pending = iter(guarded)
    found: list[str] = []
    failed: list[Unavailable] = []

    async def lookup() -> None:
        for tag, rule in pending:  # shared: each tag is taken by one of the workers
            if found or failed:
                return
            try:
                how = await _names(ask, check.repository, tag, check.digest)
            except Unavailable as exc:
                failed.append(exc)
                return
            if how is not None:
                kind = "immutable" if rule.kind == "immutable" else "protected from deletes"
                found.append(f"tag {tag} is {kind} (rule {rule.label}): {how} {check.digest}")

    await asyncio.gather(*(lookup() for _ in range(CONCURRENT_LOOKUPS)))
    if found:
        return found[0]
    if failed:
        raise failed[0]
    return None


async def _names(ask: Asker, repository: str, tag: str, digest: str) -> str | None:
    current = await ask.current(repository, tag)
    if current is None:
        return None  # deleted meanwhile
    if current == digest:
        return "it names"
    held = await ask.held(repository, current)
    if held is None:
        return f"its index nests over {MAX_NESTED} manifests to look into, so it may hold"
    return "its index holds" if digest in held else None


async def _read_manifest(
    request: web.BaseRequest, idle: float, rate: int, reservation: Reservation
) -> bytes | web.StreamResponse:
    """The whole manifest body (bounded, each piece taken from the budget), or the answer
    that refuses it."""
    if request.content_length is not None and request.content_length > MAX_MANIFEST:
        return await closing(request, _too_large())
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in paced_body(request, idle, rate):
            size += len(chunk)
            if size > MAX_MANIFEST:
                return await closing(request, _too_large())
            if not reservation.take(len(chunk)):
                message = "too many manifests in flight, retry later"
                return await closing(
                    request, error_response(503, "UNAVAILABLE", message, RETRY_AFTER)
                )
            chunks.append(chunk)
    except ClientStalled:
        return await closing(request, error_response(408, "UNKNOWN", "request body stalled"))
    return b"".join(chunks)


def _too_large() -> web.StreamResponse:
    return error_response(413, "MANIFEST_INVALID", f"manifest larger than {MAX_MANIFEST} bytes")
