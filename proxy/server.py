"""The server: one request's walk (classify -> authenticate -> authorize -> forward) and the
process lifecycle (startup, live reload, graceful shutdown on SIGTERM/SIGINT, reload on SIGHUP).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from .accesslog import USER_KEY, access_logger_class
from .authn import Authenticator, BackendUnavailable, Outcome
from .authn.htpasswd import HtpasswdAuthenticator
from .credentials import MalformedCredentials, parse_basic_auth
from .errors import error_response, unauthorized
from .forward import Forwarder
from .policy import Identity, IPAddress, authorize, decide
from .reload import State
from .routes import Refusal, catalog_page, classify, without_mount

log = logging.getLogger("regproxy")
access_log = logging.getLogger("regproxy.access")

MAX_LINE = 8190
MAX_FIELD = 8190


def _address(request: web.BaseRequest) -> IPAddress | None:
    try:
        return ipaddress.ip_address(request.remote or "")
    except ValueError:
        return None


class Handler:
    """The request path. Reads the current snapshot once per request."""

    def __init__(self, state: State, authenticator: Authenticator, forwarder: Forwarder) -> None:
        self._state = state
        self._authenticator = authenticator
        self._forwarder = forwarder

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        snapshot = self._state.current
        config = snapshot.config
        raw_path = request.raw_path
        path, _, query = raw_path.partition("?")
        operation = classify(request.method, path, query)
        if isinstance(operation, Refusal):
            return error_response(operation.status, operation.code, operation.message)
        who = await self._identify(request)
        if isinstance(who, web.Response):
            return who
        verdict = authorize(snapshot.rules, who, operation)
        if not verdict.allowed:
            if who.anonymous:
                return unauthorized(config.realm)
            return error_response(403, "DENIED", f"{operation.action} access denied")
        upstream = verdict.decision.upstream or config.upstream
        if operation.kind == "catalog":
            return await self._catalog(request, query, who, upstream)
        if verdict.drop_mount:
            log.info(
                "cross-repository mount from %s dropped for %s", operation.mount_from, who.user
            )
            kept = without_mount(query)
            raw_path = f"{path}?{kept}" if kept else path
        return await self._forwarder.forward(request, upstream, raw_path, config.timeouts)

    async def _catalog(
        self, request: web.BaseRequest, query: str, who: Identity, upstream: str
    ) -> web.StreamResponse:
        page = catalog_page(query)
        if isinstance(page, Refusal):
            return error_response(page.status, page.code, page.message)
        snapshot = self._state.current

        def may_pull(repository: str) -> bool:
            decision = decide(snapshot.rules, who, "pull", repository)
            return decision.allowed and (decision.upstream or snapshot.config.upstream) == upstream

        return await self._forwarder.catalog(
            request, upstream, page, may_pull, snapshot.config.timeouts
        )

    async def _identify(self, request: web.BaseRequest) -> Identity | web.Response:
        realm = self._state.current.config.realm
        try:
            credentials = parse_basic_auth(request.headers.getall("Authorization", []))
        except MalformedCredentials as exc:
            return error_response(400, "UNAUTHORIZED", str(exc))
        if credentials is None:
            return Identity(None, address=_address(request))
        user, password = credentials
        try:
            result = await self._authenticator.authenticate(user, password)
        except BackendUnavailable as exc:
            log.error("authentication backend unavailable: %s", exc)
            return error_response(503, "UNAVAILABLE", "authentication backend unavailable")
        if result.outcome is not Outcome.OK:
            log.info("authentication failed for %r from %s", user, request.remote)
            return unauthorized(realm, "invalid username or password")
        request[USER_KEY] = user
        return Identity(user, result.groups, _address(request))


class Server:
    """Owns the lifecycle: startup() -> serve until a signal -> shutdown()."""

    def __init__(self, state: State, ssl_context: ssl.SSLContext | None) -> None:
        self.state = state
        self.ssl_context = ssl_context
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._stops_requested = 0
        self._cleanup: list[Callable[[], Awaitable[None]]] = []

    async def serve(self, sock: socket.socket) -> None:
        """Run until SIGTERM/SIGINT, then drain. SIGHUP reloads every file."""
        await self.startup(sock)
        self._install_signals()
        try:
            await self._stop.wait()
            log.info(
                "shutting down: no new connections, draining for up to %ss",
                self.state.current.config.timeouts.drain,
            )
        finally:
            await self.shutdown()
        log.info("stopped")

    async def startup(self, sock: socket.socket) -> None:
        """Accept connections on the (already bound) socket and start watching files."""
        config = self.state.current.config
        executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        forwarder = Forwarder(config.timeouts.keepalive)
        authenticator = HtpasswdAuthenticator(lambda: self.state.current.users, executor)
        server = web.Server(
            Handler(self.state, authenticator, forwarder),
            handler_cancellation=True,
            access_log_class=access_logger_class(config.access_log),
            access_log=access_log,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            auto_decompress=False,
            keepalive_timeout=config.timeouts.keepalive,
        )
        runner = web.ServerRunner(server, shutdown_timeout=config.timeouts.drain)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=self.ssl_context).start()
        watcher = asyncio.create_task(self.state.watch())

        async def stop_watching() -> None:
            watcher.cancel()

        async def stop_executor() -> None:
            executor.shutdown(wait=False, cancel_futures=True)

        # Reverse order at shutdown: stop watching, drain connections, close the pool.
        self._cleanup = [stop_executor, forwarder.close, runner.cleanup, stop_watching]
        self.port = sock.getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        log.info("regproxy listening on %s://%s -> %s", scheme, config.listen, config.upstream)

    async def shutdown(self) -> None:
        while self._cleanup:
            await self._cleanup.pop()()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.state.reload, "SIGHUP")

    def request_stop(self) -> None:
        """First signal: graceful stop. Second: exit at once."""
        self._stops_requested += 1
        if self._stops_requested > 1:
            log.warning("second stop signal: exiting without draining")
            os._exit(1)
        self._stop.set()


def configure_logging(level: str, access_log_path: Path | None) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: logging.Handler = (
        logging.FileHandler(access_log_path)
        if access_log_path
        else logging.StreamHandler(sys.stdout)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.propagate = False
    access_log.setLevel(logging.INFO)
