"""The request path: one context per request, walked through the steps in order.

    token endpoint -> classify -> admit (address) -> identify -> admit (caller) -> authorize
    -> catalog -> guards -> forward (the guards see the answer) -> record

Each step reads and fills the request's context (`proxy.pipeline.context`) and either answers,
which ends the walk, or returns None to go on.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..authn.chain import Authentication, Credentials, Denied
from ..conf.reload import State
from ..conf.snapshot import Snapshot
from ..core.addresses import origin
from ..core.limits import Gate, Limits
from ..http import web
from ..http.errors import Canned, error_response, unauthorized
from ..http.routes import Refusal, classify_request, without_mount
from ..observe import metrics
from ..observe.accesslog import LOGGED
from ..observe.audit import audit
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..policy.identity import Identity
from ..policy.rules import authorize, decide
from ..tokenserver.endpoint import token_endpoint
from ..upstream.catalog import Catalog
from ..upstream.forward import Answer, Forwarder, Route

log = logging.getLogger("regproxy")

RETRY_SOON = {"Retry-After": "1"}


class Handler:
    """Serves one worker's requests; `guards` in the order they run."""

    def __init__(
        self,
        state: State,
        authentication: Authentication,
        forwarder: Forwarder,
        catalog: Catalog,
        guards: tuple[Guard, ...],
    ) -> None:
        self._state = state
        self._authentication = authentication
        self._forwarder = forwarder
        self._catalog = catalog
        # Only the hooks a guard has: a request pays for no empty call.
        self._checking = tuple(guard for guard in guards if guard.checks())
        self._answering = tuple(guard for guard in guards if guard.answers())
        self._gate = Gate()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self._in_flight += 1
        self._idle.clear()
        snapshot = self._state.enter()
        ctx = _context(request, snapshot)
        try:
            response = await self._walk(ctx)
            self._record(ctx, response)
            return response
        finally:
            await ctx.close()
            self._state.leave(snapshot)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def refusal(self, request: web.BaseRequest) -> Canned | None:
        """The walk's answer, recorded, when it refuses `request` before any step that waits:
        without credentials, a refusal up to the authorization step included; None when the
        request needs the whole walk (nothing was recorded then)."""
        snapshot = self._state.enter()
        ctx = _context(request, snapshot)
        try:
            response = self._refuse(ctx)
            if response is not None:
                self._record(ctx, response)
            return response
        finally:
            ctx.release()
            self._state.leave(snapshot)

    def _refuse(self, ctx: RequestContext) -> Canned | None:
        """The steps of `_walk` that need no wait, up to the policy's verdict, without their
        effects on an allowed request (a dropped mount's log line, the route)."""
        if _for_token(ctx):
            return None
        limits = ctx.config.limits
        refused = self._classify(ctx) or self._admit_address(ctx, limits)
        if refused is not None:
            return refused
        assert ctx.snapshot.authn is not None  # attached by the State of a running server
        authorization = ctx.request.headers.getall("Authorization", [])
        who = self._authentication.read(authorization, ctx.origin.address, ctx.snapshot.authn)
        if isinstance(who, Credentials):
            return None
        return self._identified(ctx, who) or self._admit_caller(ctx, limits) or self._verdict(ctx)

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is being handled (or `timeout`); True if none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _walk(self, ctx: RequestContext) -> web.StreamResponse:
        """The steps, in order: the first answer ends the walk."""
        limits = ctx.config.limits
        return (
            await self._token(ctx)
            or self._classify(ctx)
            or self._admit_address(ctx, limits)
            or await self._identify(ctx)
            or self._admit_caller(ctx, limits)
            or self._authorize(ctx)
            or await self._list(ctx)
            or await self._guard(ctx)
            or await self._forward(ctx)
        )

    async def _token(self, ctx: RequestContext) -> web.StreamResponse | None:
        """Token server mode: its endpoint, on the proxy's own listener."""
        settings, signer = ctx.config.token, ctx.snapshot.signer
        if settings is None or signer is None or not _for_token(ctx):
            return None
        ctx.counted_as = "token"
        return await token_endpoint(ctx.request, settings, signer, ctx.snapshot.rules,
                                    ctx.snapshot.grants,
                                    lambda authorization: self._who(ctx, authorization),
                                    lambda denied: _denied(denied, ctx.config.realm))  # fmt: skip

    def _classify(self, ctx: RequestContext) -> Canned | None:
        """What the request does, read as the registry will read it, or why it is refused."""
        request = ctx.request
        path, _, query = request.raw_path.partition("?")
        http11 = request.version >= (1, 1)
        operation = classify_request(request.method, path, query, request.raw_headers, http11)
        if isinstance(operation, Refusal):
            allow = {"Allow": operation.allow} if operation.allow else None
            return error_response(operation.status, operation.code, operation.message, allow)
        ctx.operation = operation
        ctx.counted_as = operation.action or operation.kind
        return None

    def _admit(
        self, ctx: RequestContext, key: str, limit: int, cap: metrics.FairShareLimit, whose: str
    ) -> Canned | None:
        """Fair share: one more request in flight under `key`, or 429 over `limit`
        (`limits.<cap>`)."""
        if not self._gate.enter(key, limit):
            metrics.RECORD.fair_share_refused(cap)
            message = f"too many requests in flight {whose}"
            return error_response(429, "TOOMANYREQUESTS", message, RETRY_SOON)
        ctx.defer(lambda: self._gate.leave(key))
        return None

    async def _identify(self, ctx: RequestContext) -> web.StreamResponse | None:
        who = await self._who(ctx, ctx.request.headers.getall("Authorization", []))
        return self._identified(ctx, who)

    async def _who(self, ctx: RequestContext, authorization: list[str]) -> Identity | Denied:
        assert ctx.snapshot.authn is not None  # attached by the State of a running server
        return await self._authentication.identify(
            authorization, ctx.origin.address, ctx.snapshot.authn
        )

    @staticmethod
    def _identified(ctx: RequestContext, who: Identity | Denied) -> Canned | None:
        if isinstance(who, Denied):
            return _denied(who, ctx.config.realm)
        ctx.identity = who
        return None

    def _admit_address(self, ctx: RequestContext, limits: Limits) -> Canned | None:
        client = ctx.origin.client
        return self._admit(
            ctx, f"addr:{client}", limits.per_address, "per_address", f"from {client}"
        )

    def _admit_caller(self, ctx: RequestContext, limits: Limits) -> Canned | None:
        """A user's share; without credentials, the share of anonymous callers together and
        of their address (a public repository cannot be made everyone's bottleneck)."""
        user, client = ctx.user, ctx.origin.client
        if user is not None:
            return self._admit(ctx, f"user:{user}", limits.per_user, "per_user", f"for {user}")
        return self._admit(
            ctx, "anonymous", limits.anonymous, "anonymous", "without credentials"
        ) or self._admit(ctx, f"anonymous:{client}", limits.anonymous_per_address,
                         "anonymous_per_address", f"without credentials from {client}")  # fmt: skip

    @staticmethod
    def _verdict(ctx: RequestContext) -> Canned | None:
        """The policy's answer: a refusal, or None (allowed)."""
        operation, who = ctx.operation, ctx.identity
        assert operation is not None and who is not None
        grants = ctx.snapshot.grants.at(time.time())  # grants expire on the clock, not at a reload
        verdict = ctx.verdict = authorize(ctx.snapshot.rules, who, operation, grants)
        if verdict.allowed:
            return None
        if who.anonymous:
            return unauthorized(ctx.config.realm)
        return error_response(403, "DENIED", f"{operation.action} access denied")

    def _authorize(self, ctx: RequestContext) -> web.StreamResponse | None:
        """The policy's answer; where an allowed request goes (a refused mount dropped)."""
        refused = self._verdict(ctx)
        if refused is not None:
            return refused
        request, operation, who, config, verdict = (ctx.request, ctx.operation, ctx.identity,
                                                    ctx.config, ctx.verdict)  # fmt: skip
        assert operation is not None and who is not None and verdict is not None
        raw_path = request.raw_path
        if verdict.drop_mount or operation.drop_mount:
            log.info("mount from %s dropped for %s", operation.mount_from or "-", who.user or "-")
            path, _, query = raw_path.partition("?")
            kept = without_mount(query)
            raw_path = f"{path}?{kept}" if kept else path
        # A rule's upstream routes its repositories; a user's own (Redis) replaces the default.
        upstream = verdict.decision.upstream or who.upstream or config.upstream
        ctx.route = Route(upstream, raw_path, ctx.origin.forwarded_for)
        return None

    async def _list(self, ctx: RequestContext) -> web.StreamResponse | None:
        """The catalog: the registry's, filtered to what the caller may pull there."""
        assert ctx.operation is not None and ctx.identity is not None and ctx.route is not None
        if ctx.operation.kind != "catalog":
            return None
        rules, who, upstream = ctx.snapshot.rules, ctx.identity, ctx.route.upstream
        default = who.upstream or ctx.config.upstream
        grants = ctx.snapshot.grants.at(time.time())

        def may_pull(name: str) -> bool:
            decision = decide(rules, who, "pull", name, grants=grants)
            return decision.allowed and (decision.upstream or default) == upstream

        # Whatever decides what the caller may pull: what the rules tell apart of them,
        # where their repositories go by default, and the grants in force for them now.
        in_force = tuple(g.id for g in grants.by_user.get(who.user or "", ())
                         if g.in_force(grants.now))  # fmt: skip
        viewer = (rules.viewer(who), default, in_force)
        query = ctx.request.raw_path.partition("?")[2]
        return await self._catalog.answer(
            query,
            may_pull,
            viewer=viewer,
            rules=rules,
            upstream=upstream,
            host=ctx.request.host,
            forwarded_for=ctx.origin.forwarded_for,
            timeouts=ctx.config.timeouts,
        )

    async def _guard(self, ctx: RequestContext) -> web.StreamResponse | None:
        for guard in self._checking:
            answer = await guard.check(ctx)
            if answer is not None:
                return answer
        return None

    async def _forward(self, ctx: RequestContext) -> web.StreamResponse:
        """The registry's answer, seen by the guards before it is streamed to the client."""
        config, route = ctx.config, ctx.route
        assert route is not None
        async with self._forwarder.exchange(
            ctx.request,
            route=route,
            owner=ctx.owner,
            limits=config.limits,
            timeouts=config.timeouts,
            body=ctx.body,
        ) as answer:
            if not isinstance(answer, Answer):
                return answer
            for guard in self._answering:
                instead = await guard.answered(ctx, answer)
                if instead is not None:
                    return instead
            idle, rate = config.timeouts.client_idle, config.limits.min_rate
            response, ctx.sent = await answer.send(ctx.request, idle, rate)
            return response

    @staticmethod
    def _record(ctx: RequestContext, response: web.StreamResponse) -> None:
        """Metrics, and the audit line of a push or delete decided for an identity (or of any
        request a grant allowed)."""
        metrics.RECORD.request(ctx.counted_as, response.status)
        if ctx.sent is not None:
            metrics.RECORD.transferred(ctx.request.content.total_bytes, ctx.sent)
        if ctx.identity is not None and ctx.operation is not None:
            audit(ctx.identity, ctx.operation, response.status, ctx.verdict)


def _for_token(ctx: RequestContext) -> bool:
    """Token server mode: the request is for its endpoint."""
    settings = ctx.config.token
    return settings is not None and ctx.request.path == settings.path


def _context(request: web.BaseRequest, snapshot: Snapshot) -> RequestContext:
    """A request's context, where the access log finds it."""
    forwarded = request.headers.getall("X-Forwarded-For", [])
    trusted = snapshot.config.trusted_proxies
    ctx = RequestContext(request, snapshot, origin(request.remote, forwarded, trusted))
    request[LOGGED] = ctx
    return ctx


def _denied(denied: Denied, realm: str) -> Canned:
    if denied.status == 401:
        return unauthorized(realm, denied.message)
    code = {400: "UNAUTHORIZED", 429: "TOOMANYREQUESTS"}.get(denied.status, "UNAVAILABLE")
    headers = {"Retry-After": str(denied.retry_after)} if denied.retry_after else None
    return error_response(denied.status, code, denied.message, headers)
