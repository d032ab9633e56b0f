"""One worker's lifecycle: startup (every resource registered for cleanup as it is made),
serving until SIGTERM/SIGINT, a graceful drain, and shutdown; SIGHUP reloads every file."""

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
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .. import guards
from ..authn.chain import Authentication, Authenticators, BackendFactory
from ..authn.robotfile import usage_path
from ..authn.robots import FLUSH_INTERVAL, RobotUsage
from ..authn.throttle import Throttle
from ..conf.config import Config
from ..conf.reload import State
from ..conf.snapshot import Snapshot
from ..core.chores import every
from ..core.limits import capacity, raise_open_files_limit
from ..core.memory import release_memory
from ..http import clienttls, web
from ..http.listener import Connections, Listener
from ..observe import metrics
from ..observe.accesslog import access_logger_class
from ..observe.logsetup import reopen_logs
from ..state.peers import Siblings
from ..state.store import LocalStore, Store
from ..upstream.catalog import Catalog, Listings
from ..upstream.client import Registry
from ..upstream.forward import Forwarder
from ..upstream.health import admin_handler
from .handler import Handler
from .lean import SUPPORTED, LeanConnections

if TYPE_CHECKING:
    from ..authn.redis_users import RedisUsers

log = logging.getLogger("regproxy")

MAX_LINE = 8190
MAX_FIELD = 8190


async def _record_robot_use(usage: RobotUsage, state: State, work: Executor) -> None:
    """Write when robots were last used next to the robots file (off the event loop)."""
    robots = state.current.config.robots
    if robots is not None:
        await asyncio.get_running_loop().run_in_executor(work, usage.flush, usage_path(robots))


class Server:
    """Owns one worker's lifecycle: startup() -> serve until a signal -> shutdown()."""

    # Each of several workers logs its lifecycle at debug level only: worker 0's supervisor
    # reports it once for all. Only worker 0 reports reloads.

    def __init__(
        self,
        snapshot: Snapshot,
        config_path: Path | None,
        overrides: Mapping[str, object],
        siblings: Siblings | None = None,
        relay: Callable[[int], None] | None = None,
        stopping: Callable[[float], None] | None = None,
    ) -> None:
        self._first = snapshot
        self._relay = relay  # worker 0 of several: each signal it handles, to the others too
        # Told, as a stop begins and again as its drain does, how long the rest may take.
        self._stopping = stopping
        self._siblings = siblings = siblings or Siblings()
        self.upload_key = siblings.upload_key  # without a secret_file (proxy.guards.uploads)
        self._config_path = config_path
        self._overrides = dict(overrides)
        # This machine's id in a shared store: random per start, the same in every worker
        # (they share the catalog key), so they skip each other's events there.
        self._replica = hashlib.blake2b(b"replica", key=siblings.catalog_key, digest_size=8)
        self._quiet = siblings.index is not None  # lifecycle: worker 0's supervisor says it
        self._reports_reloads = siblings.index in (None, 0)
        self.state: State | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._stops_requested = 0
        self._stop_signal: int | None = None
        self.draining = False  # stopping, still serving: /health 503, connections closed
        self._stack = contextlib.AsyncExitStack()
        self._reloads: set[asyncio.Task[bool]] = set()
        # What accepted connections are made by: refusals answered as parsed, where aiohttp's
        # internals are the ones `lean` was written against.
        self.factory: type[Connections] = LeanConnections if SUPPORTED else Connections
        self.connections: Connections | None = None  # made at startup

    async def serve(self, sock: socket.socket, ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT, then drain; `ready` once connections are accepted."""
        await self.startup(sock)
        try:
            self._install_signals()
            if ready is not None:
                ready()
            await self._stop.wait()
            await self._leave_load_balancers()
            (log.debug if self._quiet else log.info)(
                "shutting down: no new connections, draining for up to %ss",
                self._first.config.timeouts.drain,
            )
        finally:
            await self.shutdown()
        (log.debug if self._quiet else log.info)("stopped")

    async def _leave_load_balancers(self) -> None:
        """On SIGTERM, with a `/health` to say it: `timeouts.drain_delay` seconds of serving
        while unready, so load balancers leave before this worker stops accepting."""
        assert self.state is not None
        config = self.state.current.config
        delay = config.timeouts.drain_delay
        if self._stop_signal != signal.SIGTERM or config.metrics_listen is None or not delay:
            return
        self.draining = True
        (log.info if self._reports_reloads else log.debug)(
            "stopping: /health answers 503 draining for %ss while requests are served, "
            "each connection closed after its answer",
            delay,
        )
        await asyncio.sleep(delay)

    async def startup(self, sock: socket.socket) -> None:
        """Accept connections and watch files; a failure closes everything made before it."""
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
        clienttls.for_url(config.upstream)  # an https:// registry's CAs read before serving
        forwarder = Forwarder(room, config.timeouts.keepalive)
        self._stack.push_async_callback(forwarder.close)
        registry = Registry(forwarder.session, room.own)
        listings = Listings(clock)
        handler = Handler(
            state,
            Authentication(throttle, clock, store=store),
            forwarder,
            Catalog(registry, self._siblings.catalog_key, listings),
            guards.ordered(store, registry, self.upload_key, listings, clock),
        )
        self._listen(sock, handler, state, room.connections)
        self._start_chores(state, factory.robot_usage, work)
        if config.metrics_listen is not None:
            await self._start_admin(registry, store)
        self.port = sock.getsockname()[1]
        (log.debug if self._quiet else log.info)(
            "regproxy listening on https://%s -> %s (up to %d connections per worker)",
            config.listen,
            config.upstream,
            room.connections,
        )

    def _executors(self) -> tuple[Executor, Executor]:
        """The pool slow password hashes run in, and a small one for reloads and chores."""
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
            return factory.authenticators(
                snapshot.config.authentication, snapshot.users, robots, old
            )

        state = self.state = State(
            self._first, self._config_path, self._overrides, attach, not self._reports_reloads, work
        )
        self._stack.callback(state.close)
        await state.start()
        return state

    def _listen(
        self, sock: socket.socket, handler: Handler, state: State, connections: int
    ) -> None:
        """Accept connections on `sock`, each with the current snapshot's TLS context."""
        config = self._first.config
        listener = Listener(
            sock,
            lambda: state.current.tls,
            config.timeouts,
            connections,
            config.limits.connections_per_address,
        )
        manager = self.connections = self.factory(
            handler,
            listener,
            config.timeouts.header,
            lambda: self.draining,
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
            if self._stopping is not None:  # a reload since the signal may have changed it
                self._stopping(drain_timeout + self._closing_time())
            if not await handler.drained(drain_timeout):
                log.warning("drain timeout (%ss): closing requests still running", drain_timeout)
            manager.pre_shutdown()
            await manager.shutdown(1.0)

        listener.start(manager)
        self._stack.push_async_callback(drain)

    def _start_chores(self, state: State, usage: RobotUsage, work: Executor) -> None:
        """What runs beside the requests until shutdown: freeing memory, watching files, usage."""
        record = functools.partial(_record_robot_use, usage, state, work)
        self._stack.push_async_callback(record)  # at shutdown: what was seen since the last time
        for chore in (release_memory(), state.watch(), every(FLUSH_INTERVAL, record)):
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

    async def _start_admin(self, registry: Registry, store: Store) -> None:
        """`/metrics`, `/health` and `/live` on their own plain-HTTP listener (SO_REUSEPORT)."""
        state = self.state
        assert state is not None
        config = state.current.config
        assert config.metrics_listen is not None
        admin = admin_handler(registry, lambda: state.current.config, store, lambda: self.draining)
        # No access lines: a probe every few seconds per pod is noise, not traffic.
        from aiohttp.web_runner import ServerRunner, TCPSite

        runner = ServerRunner(web.Server(admin, access_log=None), shutdown_timeout=1)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = TCPSite(
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
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: functools.partial(self.request_stop, signal.SIGTERM),
            signal.SIGINT: functools.partial(self.request_stop, signal.SIGINT),
            signal.SIGHUP: functools.partial(self._reload, "SIGHUP"),
            signal.SIGUSR1: reopen_logs,
        }
        loop = asyncio.get_running_loop()
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, self._relayed, signum, handler)
        # One of several workers starts with these blocked: any that came meanwhile arrive now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(handlers))

    def _relayed(self, signum: int, handler: Callable[[], None]) -> None:
        if self._relay is not None:  # first: a second SIGTERM exits at once
            self._relay(signum)
        handler()

    def _reload(self, reason: str) -> None:
        assert self.state is not None
        task = asyncio.ensure_future(self.state.reload(reason, reread=True))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """First signal: graceful stop; second: exit at once."""
        self._stops_requested += 1
        if self._stops_requested > 1:
            log.warning("second stop signal: exiting without draining")
            os._exit(1)
        self._stop_signal = signum
        if self._stopping is not None and self.state is not None:
            timeouts = self.state.current.config.timeouts
            self._stopping(timeouts.drain_delay + timeouts.drain + self._closing_time())
        self._stop.set()

    def _closing_time(self) -> float:
        """The most closing everything after the drain takes: aiohttp's shutdowns of the
        connections and of the admin listener (a second each), and with Redis the store's
        last writes (a command held by `WAIT` and a reconnection, twice)."""
        assert self.state is not None
        store = self.state.current.config.state
        redis = 2 * (1.5 * store.timeout + store.connect_timeout) if store.backend == "redis" else 0
        return 2.0 + redis
