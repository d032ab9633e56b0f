"""The server: one request's walk, and the worker's lifecycle.

A request takes one snapshot of the configuration and walks down the steps with it:
classify -> authenticate -> authorize -> guard tags -> forward (or answer: ping, catalog,
token) -> log.
`Server` owns the lifecycle: startup (every resource registered for cleanup as it is made),
serving until SIGTERM/SIGINT, a graceful drain, and shutdown; SIGHUP reloads every file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..authn.chain import Authentication, Authenticators, BackendFactory, Denied
from ..authn.robotfile import usage_path
from ..authn.robots import FLUSH_INTERVAL, RobotUsage
from ..authn.throttle import Throttle
from ..conf.config import Config
from ..conf.reload import State
from ..conf.snapshot import Snapshot
from ..core.addresses import Origin, origin
from ..core.limits import Gate, capacity, raise_open_files_limit
from ..core.memory import release_memory
from ..guards import uploads
from ..guards.tags import TagGuard
from ..http.errors import (
    API_VERSION,
    API_VERSION_HEADER,
    SERVER,
    error_response,
    ping_response,
    unauthorized,
)
from ..http.listener import Connections, Listener
from ..http.routes import Operation, Refusal, classify_request, without_mount
from ..observe import metrics
from ..observe.accesslog import BYTES_KEY, USER_KEY, access_logger_class
from ..observe.audit import audit
from ..observe.logsetup import reopen_logs
from ..policy.identity import Identity
from ..policy.rules import Verdict, authorize, decide
from ..state.peers import Siblings
from ..state.store import LocalStore, Store
from ..tokenserver.endpoint import token_endpoint
from ..upstream.catalog import Filtering, fetch_page, filtered, next_link, parse_page
from ..upstream.forward import Forwarder, OnHeaders, Route
from ..upstream.headcache import CachingForwarder
from ..upstream.health import Health, admin_handler

if TYPE_CHECKING:
    from ..authn.redis_users import RedisUsers

log = logging.getLogger("regproxy")

MAX_LINE = 8190
MAX_FIELD = 8190
RETRY_SOON = {"Retry-After": "1"}


class Handler:
    """The request path: one snapshot per request, passed down to every step."""

    def __init__(
        self,
        state: State,
        authentication: Authentication,
        forwarder: TagGuard,
        health: Health,
        session: aiohttp.ClientSession,
        catalog_key: bytes,
        upload_key: bytes,
    ) -> None:
        self._state = state
        self._upload_key = upload_key  # without a secret_file: shared by this tree of workers
        self._authentication = authentication
        self._forwarder = forwarder
        self._health = health
        self._session = session
        self._catalog_key = catalog_key
        self._filtering = Filtering()
        self._gate = Gate()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self._in_flight += 1
        self._idle.clear()
        snapshot = self._state.enter()
        try:
            return await self._dispatch(request, snapshot)
        finally:
            self._state.leave(snapshot)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is being handled (or `timeout`); True if none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _dispatch(self, request: web.BaseRequest, snapshot: Snapshot) -> web.StreamResponse:
        config = snapshot.config
        path, _, query = request.raw_path.partition("?")
        where = origin(
            request.remote,
            request.headers.getall("X-Forwarded-For", []),
            config.trusted_proxies,
        )
        if config.token is not None and path == config.token.path:
            return await token_endpoint(
                request,
                snapshot,
                functools.partial(self._identify, address=where, snapshot=snapshot),
                functools.partial(_denied, realm=config.realm),
            )
        http11 = request.version >= (1, 1)
        operation = classify_request(request.method, path, query, request.raw_headers, http11)
        if isinstance(operation, Refusal):
            metrics.RECORD.request("refused", operation.status)
            allow = {"Allow": operation.allow} if operation.allow else None
            return error_response(operation.status, operation.code, operation.message, allow)
        address = f"addr:{where.client}"
        if not self._gate.enter(address, config.limits.per_address):
            return _busy(f"too many requests in flight from {where.client}")
        try:
            response = await self._handle(request, operation, snapshot, where)
        finally:
            self._gate.leave(address)
        metrics.RECORD.request(operation.action or operation.kind, response.status)
        return response

    async def _identify(
        self, authorization: list[str], address: Origin, snapshot: Snapshot
    ) -> Identity | Denied:
        assert snapshot.authn is not None  # attached by the State of a running server
        return await self._authentication.identify(authorization, address.address, snapshot.authn)

    async def _handle(
        self, request: web.BaseRequest, operation: Operation, snapshot: Snapshot, where: Origin
    ) -> web.StreamResponse:
        config = snapshot.config
        who = await self._identify(request.headers.getall("Authorization", []), where, snapshot)
        if isinstance(who, Denied):
            return _denied(who, config.realm)
        request[USER_KEY] = who.user or "-"
        user = f"user:{who.user}"
        if who.user is not None and not self._gate.enter(user, config.limits.per_user):
            return _busy(f"too many requests in flight for {who.user}")
        try:
            return await self._authorized(request, operation, snapshot, who, where)
        finally:
            if who.user is not None:
                self._gate.leave(user)

    async def _authorized(
        self,
        request: web.BaseRequest,
        operation: Operation,
        snapshot: Snapshot,
        who: Identity,
        where: Origin,
    ) -> web.StreamResponse:
        config = snapshot.config
        verdict = authorize(snapshot.rules, who, operation)
        if not verdict.allowed:
            refusal = (
                unauthorized(config.realm)
                if who.anonymous
                else error_response(403, "DENIED", f"{operation.action} access denied")
            )
            audit(who, operation, refusal.status)
            return refusal
        # A rule's upstream routes its repositories; a user's own (Redis) replaces the default.
        upstream = verdict.decision.upstream or who.upstream or config.upstream
        if operation.kind == "catalog":
            query = request.raw_path.partition("?")[2]
            return await self._catalog(request, query, who, upstream, snapshot, where)
        if operation.kind == "ping" and self._health.answers_pings(upstream):
            return ping_response()
        target = self._target(request.raw_path, operation, verdict, snapshot, who)
        if isinstance(target, web.Response):
            return target
        raw_path, bind = target
        route = Route(upstream, raw_path, where.forwarded_for)
        with metrics.RECORD.forwarding():
            response = await self._forwarder.forward(request, route, operation, config, bind)
        self._health.answered(upstream, raw_path, response.status)
        metrics.RECORD.transferred(request.content.total_bytes, request.get(BYTES_KEY, 0))
        audit(who, operation, response.status)
        return response

    def _target(
        self,
        raw_path: str,
        operation: Operation,
        verdict: Verdict,
        snapshot: Snapshot,
        who: Identity,
    ) -> tuple[str, OnHeaders | None] | web.Response:
        """The path and query to forward (a refused mount dropped; an upload's binding checked
        and taken off) and, for requests answered with an upload's Location, what signs it; or
        the refusal of another's upload."""
        path, _, query = raw_path.partition("?")
        if verdict.drop_mount or operation.drop_mount:
            log.info("mount from %s dropped for %s", operation.mount_from or "-", who.user or "-")
            kept = without_mount(query)
            raw_path = f"{path}?{kept}" if kept else path
        if operation.kind not in ("upload-start", "upload"):
            return raw_path, None
        key = snapshot.key("uploads") or self._upload_key
        if operation.kind == "upload":
            own = uploads.check(key, operation, query, who.user)
            if isinstance(own, Refusal):
                log.warning("%s refused the upload %s of another", who.user, operation.reference)
                audit(who, operation, own.status)
                return error_response(own.status, own.code, own.message)
            raw_path = f"{path}?{own}" if own else path
        return raw_path, _binder(operation, key, who)

    async def _catalog(
        self,
        request: web.BaseRequest,
        query: str,
        who: Identity,
        upstream: str,
        snapshot: Snapshot,
        where: Origin,
    ) -> web.StreamResponse:
        page = parse_page(query, self._catalog_key)
        if isinstance(page, Refusal):
            return error_response(page.status, page.code, page.message)
        n, last = page
        rules, default = snapshot.rules, who.upstream or snapshot.config.upstream

        def may_pull(name: str) -> bool:
            decision = decide(rules, who, "pull", name)
            return decision.allowed and (decision.upstream or default) == upstream

        timeouts = snapshot.config.timeouts
        headers = {
            "Host": request.host,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-For": where.forwarded_for,
        }
        timeout = aiohttp.ClientTimeout(sock_connect=timeouts.connect, sock_read=timeouts.read)
        fetch = functools.partial(fetch_page, self._session, upstream, headers, timeout)
        try:
            allow = functools.partial(self._filtering.allowed, may_pull)
            listing = await filtered(fetch, allow, n, last)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return error_response(504, "UNAVAILABLE", "upstream registry timed out")
        except (aiohttp.ClientError, ValueError) as exc:
            log.warning("upstream %s catalog failed: %s", upstream, exc)
            return error_response(502, "UNAVAILABLE", "upstream registry catalog failed")
        response = web.json_response({"repositories": listing.repositories})
        link = next_link(listing, n, self._catalog_key)
        if link is not None:
            response.headers["Link"] = link
        response.headers[API_VERSION_HEADER] = API_VERSION
        response.headers["Server"] = SERVER
        return response


def _binder(operation: Operation, key: bytes, who: Identity) -> OnHeaders:
    """For requests that answer with an upload's Location: sign it for whoever asked."""
    repository = operation.repository
    assert repository is not None  # uploads always name their repository

    def bind(_: int, headers: CIMultiDict[str]) -> None:
        if "Location" in headers:
            headers["Location"] = uploads.bind_location(
                headers["Location"], repository, key, who.user
            )

    return bind


def _busy(message: str) -> web.Response:
    return error_response(429, "TOOMANYREQUESTS", message, RETRY_SOON)


def _denied(denied: Denied, realm: str) -> web.Response:
    if denied.status == 401:
        return unauthorized(realm, denied.message)
    code = {400: "UNAUTHORIZED", 429: "TOOMANYREQUESTS"}.get(denied.status, "UNAVAILABLE")
    headers = {"Retry-After": str(denied.retry_after)} if denied.retry_after else None
    return error_response(denied.status, code, denied.message, headers)


async def _record_robot_use(usage: RobotUsage, state: State, work: Executor) -> None:
    """Write when robots were last used next to the robots file (off the event loop)."""
    robots = state.current.config.robots
    if robots is not None:
        await asyncio.get_running_loop().run_in_executor(work, usage.flush, usage_path(robots))


async def _every(seconds: float, chore: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        await chore()


class Server:
    """Owns one worker's lifecycle: startup() -> serve until a signal -> shutdown().

    `siblings`: the other workers of its supervisor (proxy.state.peers.Siblings; by default it is
    alone). Under a supervisor, which reports the lifecycle, a worker logs it at debug level
    only, and only worker 0 reports reloads."""

    def __init__(
        self,
        snapshot: Snapshot,
        config_path: Path | None,
        overrides: Mapping[str, object],
        siblings: Siblings | None = None,
    ) -> None:
        self._first = snapshot
        self._siblings = siblings = siblings or Siblings()
        self.upload_key = siblings.upload_key  # without a secret_file (proxy.guards.uploads)
        self._config_path = config_path
        self._overrides = dict(overrides)
        # This machine's id in a shared store: random per start, the same in every worker
        # (they share the catalog key), so they skip each other's events there.
        self._replica = hashlib.blake2b(b"replica", key=siblings.catalog_key, digest_size=8)
        self._quiet = siblings.index is not None  # lifecycle: the supervisor says it
        self._reports_reloads = siblings.index in (None, 0)
        self.state: State | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._stops_requested = 0
        self._stack = contextlib.AsyncExitStack()
        self._reloads: set[asyncio.Task[bool]] = set()

    async def serve(self, sock: socket.socket, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT, then drain. SIGHUP reloads every file. `ready` is called
        once connections are being accepted."""
        await self.startup(sock)
        try:
            self._install_signals()
            if ready is not None:
                ready()
            await self._stop.wait()
            (log.debug if self._quiet else log.info)(
                "shutting down: no new connections, draining for up to %ss",
                self._first.config.timeouts.drain,
            )
        finally:
            await self.shutdown()
        (log.debug if self._quiet else log.info)("stopped")

    async def startup(self, sock: socket.socket) -> None:
        """Accept connections on the (already bound) socket and start watching files. A
        failure at any step closes everything made before it."""
        try:
            await self._start(sock)
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self, sock: socket.socket) -> None:
        config = self._first.config
        if config.metrics_listen is not None:
            metrics.enable()
        hashing, work = self._executors()
        clock = time.monotonic
        store, redis_users = await self._start_store(config, clock)
        throttle = Throttle(store.publish)
        factory = BackendFactory(
            hashing, clock, credentials_key=self._siblings.credentials_key,
            share=store.tell_workers, redis_users=redis_users,
        )  # fmt: skip
        store.subscribe(factory.learn)
        state = await self._start_state(factory, work)
        store.subscribe(
            lambda event, age: throttle.apply(event, clock() - age, state.current.config.throttle)
        )
        room = capacity(config.limits, raise_open_files_limit())
        forwarder = Forwarder(room.upstream, config.timeouts.keepalive)
        self._stack.push_async_callback(forwarder.close)
        handler = Handler(
            state,
            Authentication(throttle, clock, store.flush),
            TagGuard(CachingForwarder(forwarder, store, clock), store, forwarder.session),
            Health(clock),
            forwarder.session,
            self._siblings.catalog_key,
            self.upload_key,
        )
        self._listen(sock, handler, state, room.connections)
        self._start_chores(state, factory.robot_usage, work)
        if config.metrics_listen is not None:
            await self._start_admin(forwarder, store)
        self.port = sock.getsockname()[1]
        (log.debug if self._quiet else log.info)(
            "regproxy listening on https://%s -> %s (up to %d connections per worker)",
            config.listen,
            config.upstream,
            room.connections,
        )

    def _executors(self) -> tuple[Executor, Executor]:
        """The pool slow password hashes run in, and a small one for reloads and for writing
        when robots were last used."""
        hashing = ThreadPoolExecutor(max(2, os.cpu_count() or 2), "regproxy-hash")
        self._stack.callback(hashing.shutdown, wait=False, cancel_futures=True)
        work = ThreadPoolExecutor(2, "regproxy-work")
        self._stack.callback(work.shutdown, wait=False, cancel_futures=True)
        return hashing, work

    async def _start_store(
        self, config: Config, clock: Callable[[], float]
    ) -> tuple[Store, RedisUsers | None]:
        store, redis_users = self._store(config, clock)
        self._stack.push_async_callback(store.close)
        if redis_users is not None:
            self._stack.push_async_callback(redis_users.close)
        await store.start()
        metrics.RECORD.store_up(store.healthy)  # a local store is never away
        return store, redis_users

    async def _start_state(self, factory: BackendFactory, work: Executor) -> State:
        """The first snapshot with its backends attached (built in `work`), then watched."""

        def attach(snapshot: Snapshot, previous: Snapshot | None) -> Authenticators:
            robot_key = snapshot.key("robots") if snapshot.config.robots is not None else None
            robots = (snapshot.robots, robot_key) if robot_key is not None else None
            old = previous.authn if previous else None
            return factory.authenticators(snapshot.config, snapshot.users, robots, old)

        state = self.state = State(
            self._first, self._config_path, self._overrides, attach, not self._reports_reloads, work
        )
        self._stack.callback(state.close)
        await state.start()
        return state

    def _listen(
        self, sock: socket.socket, handler: Handler, state: State, connections: int
    ) -> None:
        """Accept connections on `sock`, each with the current snapshot's TLS context; at
        shutdown, drain them."""
        config = self._first.config
        listener = Listener(sock, lambda: state.current.tls, config.timeouts, connections)
        manager = Connections(
            handler,
            listener,
            config.timeouts.header,
            handler_cancellation=True,
            access_log_class=access_logger_class(config.access_log),
            access_log=logging.getLogger("regproxy.access"),
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            auto_decompress=False,
            keepalive_timeout=config.timeouts.keepalive,
        )

        async def drain() -> None:
            # aiohttp's own graceful shutdown stops reading request bodies, which would stall
            # an upload in flight: stop accepting, let handlers finish, and only then close.
            listener.stop()
            drain_timeout = state.current.config.timeouts.drain
            if not await handler.drained(drain_timeout):
                log.warning("drain timeout (%ss): closing requests still running", drain_timeout)
            manager.pre_shutdown()
            await manager.shutdown(1.0)

        listener.start(manager)
        self._stack.push_async_callback(drain)

    def _start_chores(self, state: State, usage: RobotUsage, work: Executor) -> None:
        """What runs beside the requests until shutdown: returning freed memory, watching the
        files, writing when robots were last used (and once more at shutdown)."""
        record = functools.partial(_record_robot_use, usage, state, work)
        self._stack.push_async_callback(record)  # at shutdown: what was seen since the last time
        for chore in (release_memory(), state.watch(), _every(FLUSH_INTERVAL, record)):
            self._stack.callback(asyncio.ensure_future(chore).cancel)

    def _store(self, config: Config, clock: Callable[[], float]) -> tuple[Store, RedisUsers | None]:
        """The configured store (and, with Redis, the worker's view of the users there)."""
        local = LocalStore(self._siblings.peers, self._siblings.lock_dir)
        if config.state.backend == "local":
            return local, None
        from ..authn.redis_users import RedisUsers
        from ..state.redis_store import RedisStore

        def retention() -> float:  # as long as the throttle may still act on a failure
            throttle = self.state.current.config.throttle if self.state else config.throttle
            return throttle.window + throttle.max_delay

        origin = self._replica.hexdigest().encode()
        store = RedisStore(config.state, local, origin, retention, clock)
        return store, RedisUsers(store.client, store.keys, clock, lambda: store.healthy)

    async def _start_admin(self, forwarder: Forwarder, store: Store) -> None:
        """`/metrics`, `/health` and `/live` on their own plain-HTTP listener (keep it on
        loopback or a management network); every worker binds it with SO_REUSEPORT."""
        state = self.state
        assert state is not None
        config = state.current.config
        assert config.metrics_listen is not None
        admin = admin_handler(forwarder.session, lambda: state.current.config, store)
        # No access lines: a probe every few seconds per pod is noise, not traffic.
        runner = web.ServerRunner(web.Server(admin, access_log=None), shutdown_timeout=1)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(
            runner,
            config.metrics_listen.host,
            config.metrics_listen.port,
            reuse_port=config.workers > 1,
        )
        await site.start()
        self.metrics_port = runner.addresses[0][1]
        (log.debug if self._quiet else log.info)(
            "metrics and health on http://%s", config.metrics_listen
        )

    async def shutdown(self) -> None:
        """Close everything startup made, in reverse order (safe to call twice)."""
        for task in self._reloads:
            task.cancel()
        await self._stack.aclose()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload, "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
        # A supervised worker starts with these blocked: any that came meanwhile arrive now.
        signal.pthread_sigmask(
            signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
        )

    def _reload(self, reason: str) -> None:
        assert self.state is not None
        task = asyncio.ensure_future(self.state.reload(reason))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def request_stop(self) -> None:
        """First signal: graceful stop. Second: exit at once."""
        self._stops_requested += 1
        if self._stops_requested > 1:
            log.warning("second stop signal: exiting without draining")
            os._exit(1)
        self._stop.set()
