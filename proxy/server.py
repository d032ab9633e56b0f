"""The server: one request's walk (classify -> authenticate -> authorize -> forward) and the
process lifecycle (startup, live reload, graceful shutdown on SIGTERM/SIGINT, reload on SIGHUP).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from aiohttp import web

from . import metrics
from .accesslog import BYTES_KEY, SINK, USER_KEY, access_logger_class
from .authn.chain import Authentication, Backends, Denied
from .authn.htpasswd import HtpasswdAuthenticator
from .cache import blob_key, cache_key
from .config import Config
from .credentials import basic_header, groups_of
from .errors import error_response, ping_response, unauthorized
from .forward import Forwarder
from .peers import Peers, SharedThrottle
from .policy import Identity, IPAddress, IPNetwork, authorize, client_address, decide
from .reload import State
from .routes import Operation, Refusal, catalog_page, classify_request, without_mount
from .throttle import Throttle
from .token import issue

log = logging.getLogger("regproxy")
access_log = logging.getLogger("regproxy.access")
audit_log = logging.getLogger("regproxy.audit")

MAX_LINE = 8190
MAX_FIELD = 8190


class Handler:
    """The request path. Reads the current snapshot once per request."""

    def __init__(self, state: State, authentication: Authentication, forwarder: Forwarder) -> None:
        self._state = state
        self._authentication = authentication
        self._forwarder = forwarder
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._dispatch(request)
        finally:
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

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        token = self._state.current.config.token
        if token is not None and path == token.path:
            return await self._token(request)
        http11 = request.version >= (1, 1)
        operation = classify_request(request.method, path, query, request.raw_headers, http11)
        if isinstance(operation, Refusal):
            metrics.RECORD.request("refused", operation.status)
            return error_response(operation.status, operation.code, operation.message)
        response = await self._handle(request, operation, path, query)
        metrics.RECORD.request(operation.action or operation.kind, response.status)
        return response

    async def _handle(
        self, request: web.BaseRequest, operation: Operation, path: str, query: str
    ) -> web.StreamResponse:
        snapshot = self._state.current
        config = snapshot.config
        raw_path = request.raw_path
        who = await self._identify(request, request.headers.getall("Authorization", []))
        if isinstance(who, Denied):
            return _denied(who, config.realm)
        request[USER_KEY] = who.user or "-"
        verdict = authorize(snapshot.rules, who, operation)
        if not verdict.allowed:
            refusal = (
                unauthorized(config.realm)
                if who.anonymous
                else error_response(403, "DENIED", f"{operation.action} access denied")
            )
            _audit(who, operation, refusal.status)
            return refusal
        upstream = verdict.decision.upstream or config.upstream
        if operation.kind == "catalog":
            return await self._catalog(request, query, who, upstream)
        if operation.kind == "ping" and self._forwarder.answers_pings(upstream):
            return ping_response()
        if verdict.drop_mount:
            log.info("mount from %s dropped for %s", operation.mount_from, who.user or "-")
            kept = without_mount(query)
            raw_path = f"{path}?{kept}" if kept else path
        key = None
        if config.cache_ttl > 0:
            key = cache_key(request.method, operation, upstream, path, query, request.headers)
        if key is not None and (hit := await self._forwarder.cached(request, key)) is not None:
            metrics.RECORD.cache_hit()
            return hit
        forwarded_for = _forwarded_for(request, config.trusted_proxies)
        store = (key, config.cache_ttl) if key is not None else None
        with metrics.RECORD.forwarding():
            response = await self._forwarder.forward(
                request, upstream, raw_path, config.timeouts, forwarded_for, store
            )
        gone = blob_key(operation, upstream, path)
        if gone is not None:
            self._forwarder.forget(gone)
        metrics.RECORD.transferred(request.content.total_bytes, request.get(BYTES_KEY, 0))
        _audit(who, operation, response.status)
        return response

    async def _token(self, request: web.BaseRequest) -> web.StreamResponse:
        """The token endpoint: GET with Basic credentials, or the OAuth2 password grant."""
        snapshot = self._state.current
        settings, signer = snapshot.config.token, snapshot.signer
        assert settings is not None and signer is not None  # load_snapshot pairs them
        if request.method == "GET":
            params = request.query
            authorization = request.headers.getall("Authorization", [])
        elif request.method == "POST":
            try:
                params = await request.post()  # type: ignore[assignment]
            except ValueError:
                return _oauth_error(400, "invalid_request", "malformed form")
            if params.get("grant_type") != "password":
                return _oauth_error(400, "unsupported_grant_type")
            user, password = str(params.get("username", "")), str(params.get("password", ""))
            authorization = [basic_header(user, password)] if user else []
        else:
            return _oauth_error(405, "invalid_request")
        if params.get("service") != settings.service:
            return _oauth_error(400, "invalid_request", "unknown service")
        who = await self._identify(request, authorization)
        if isinstance(who, Denied):
            return _denied(who, snapshot.config.realm)
        account = params.get("account")
        if account and account != who.user:
            return _oauth_error(400, "invalid_request", "account does not match the credentials")
        request[USER_KEY] = who.user or "-"
        scopes = [str(v) for v in params.getall("scope", [])]
        answer = issue(settings, signer, snapshot.rules, who, scopes)
        log.info("token for %s: %s", who.user or "anonymous", answer["scope"] or "(no access)")
        return web.json_response(answer)

    async def _identify(
        self, request: web.BaseRequest, authorization: list[str]
    ) -> Identity | Denied:
        """The caller, at the client address that trusted proxies vouch for."""
        config = self._state.current.config
        address = client_address(
            _peer(request), request.headers.getall("X-Forwarded-For", []), config.trusted_proxies
        )
        self._authentication.throttle.settings = config.throttle
        return await self._authentication.identify(authorization, address)

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

        forwarded_for = _forwarded_for(request, snapshot.config.trusted_proxies)
        return await self._forwarder.catalog(
            request, upstream, page, may_pull, snapshot.config.timeouts, forwarded_for
        )


def _peer(request: web.BaseRequest) -> IPAddress | None:
    return _ip(request.remote or "")


@lru_cache(maxsize=4096)
def _ip(text: str) -> IPAddress | None:
    """Parsed once per distinct peer: ipaddress costs more than the rest of a 401."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_for(request: web.BaseRequest, trusted: tuple[IPNetwork, ...]) -> str:
    """The X-Forwarded-For to send: the client's chain only when it came through a trusted
    proxy, always ending with the peer that connected to us."""
    peer = _peer(request)
    own = str(peer) if peer else "unknown"
    chain = ", ".join(request.headers.getall("X-Forwarded-For", []))
    if chain and peer is not None and any(peer in network for network in trusted):
        return f"{chain}, {own}"
    return own


def _oauth_error(status: int, error: str, description: str = "") -> web.Response:
    body = {"error": error, **({"error_description": description} if description else {})}
    return web.json_response(body, status=status)


def _denied(denied: Denied, realm: str) -> web.Response:
    if denied.status == 401:
        return unauthorized(realm, denied.message)
    code = {400: "UNAUTHORIZED", 429: "TOOMANYREQUESTS"}.get(denied.status, "UNAVAILABLE")
    headers = {"Retry-After": str(denied.retry_after)} if denied.retry_after else None
    return error_response(denied.status, code, denied.message, headers)


def _audit(who: Identity, operation: Operation, status: int) -> None:
    """Push and delete decisions, allowed or refused, as one JSON line each."""
    if operation.action not in ("push", "delete"):
        return
    audit_log.info(
        json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "client": str(who.address) if who.address else None,
                "user": who.user,
                "action": operation.action,
                "repository": operation.repository,
                "reference": operation.reference,
                "status": status,
            }
        )
    )


class Server:
    """Owns the lifecycle: startup() -> serve until a signal -> shutdown()."""

    def __init__(
        self, state: State, ssl_context: ssl.SSLContext | None, peers: Peers | None = None
    ) -> None:
        self.state = state
        self.ssl_context = ssl_context
        self._peers = peers  # the other workers, when there are several
        self.port: int | None = None
        self.metrics_port: int | None = None
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
        if config.metrics_listen is not None:
            metrics.enable()
        executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        forwarder = Forwarder(config.timeouts.keepalive)
        htpasswd = HtpasswdAuthenticator(lambda: self.state.current.users, executor)
        backends = Backends(lambda: self.state.current.config, htpasswd)
        throttle = Throttle(config.throttle)
        if self._peers is not None:  # several workers: failed logins count across them
            throttle = SharedThrottle(config.throttle, self._peers)
        authentication = Authentication(
            backends,
            throttle,
            lambda user: groups_of(self.state.current.users.groups, user),
        )
        handler = Handler(self.state, authentication, forwarder)
        server = web.Server(
            handler,
            handler_cancellation=True,
            access_log_class=access_logger_class(config.access_log),
            access_log=access_log,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            auto_decompress=False,
            keepalive_timeout=config.timeouts.keepalive,
        )
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.SockSite(runner, sock, ssl_context=self.ssl_context)
        await site.start()
        watcher = asyncio.create_task(self.state.watch())
        trimmer = asyncio.create_task(release_memory())
        stop_listening = throttle.listen() if isinstance(throttle, SharedThrottle) else None

        async def drain() -> None:
            # aiohttp's own graceful shutdown stops reading request bodies, which would stall
            # an upload in flight: stop accepting, let handlers finish, and only then close.
            await site.stop()
            drain_timeout = self.state.current.config.timeouts.drain
            if not await handler.drained(drain_timeout):
                log.warning("drain timeout (%ss): closing requests still running", drain_timeout)
            await runner.cleanup()

        async def stop_watching() -> None:
            watcher.cancel()
            trimmer.cancel()
            if stop_listening is not None:
                stop_listening()

        async def stop_executor() -> None:
            backends.close()
            executor.shutdown(wait=False, cancel_futures=True)

        # Reverse order at shutdown: stop watching, drain connections, close the pool.
        self._cleanup = [stop_executor, forwarder.close, drain, stop_watching]
        self.state.on_reload = lambda ok: metrics.RECORD.reloaded(ok)  # RECORD read per call
        if config.metrics_listen is not None:
            self._cleanup.append(await self._start_admin(config, forwarder))
        self.port = sock.getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        log.info("regproxy listening on %s://%s -> %s", scheme, config.listen, config.upstream)

    async def _start_admin(
        self, config: Config, forwarder: Forwarder
    ) -> Callable[[], Awaitable[None]]:
        """`/metrics` and `/health` on their own plain-HTTP listener (keep it on loopback or
        a management network); every worker binds it with SO_REUSEPORT."""

        async def health(_: web.BaseRequest) -> web.Response:
            current = self.state.current.config
            ok = await forwarder.probe(current.upstream, current.timeouts)
            body = {"status": "ok" if ok else "upstream unavailable", "upstream": current.upstream}
            return web.json_response(body, status=200 if ok else 503)

        async def admin(request: web.BaseRequest) -> web.StreamResponse:
            routes = {"/metrics": metrics.metrics, "/health": health}
            handler = routes.get(request.path)
            if handler is None or request.method not in ("GET", "HEAD"):
                return web.Response(status=404, text="not found\n")
            return await handler(request)

        runner = web.ServerRunner(web.Server(admin), shutdown_timeout=1)
        await runner.setup()
        assert config.metrics_listen is not None
        site = web.TCPSite(
            runner,
            config.metrics_listen.host,
            config.metrics_listen.port,
            reuse_port=config.workers > 1,
        )
        await site.start()
        self.metrics_port = runner.addresses[0][1]
        log.info("metrics and health on http://%s", config.metrics_listen)
        return runner.cleanup

    async def shutdown(self) -> None:
        while self._cleanup:
            await self._cleanup.pop()()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.state.reload, "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, reopen_logs)

    def request_stop(self) -> None:
        """First signal: graceful stop. Second: exit at once."""
        self._stops_requested += 1
        if self._stops_requested > 1:
            log.warning("second stop signal: exiting without draining")
            os._exit(1)
        self._stop.set()


TRIM_INTERVAL = 1.0


async def release_memory() -> None:
    """Hand freed heap pages back to the system once a second (glibc's malloc_trim).

    Each TLS connection reads into 256 KiB blocks (uvloop) that glibc serves from the heap once
    a large block has been freed; the pages they touched stay resident after the connection
    is gone, so without this a worker's RSS only ever grows. Measured over the bench's order of
    cases on 2 workers (64 and 256 connections, downloads, uploads): the largest worker peaks at
    47 MiB instead of 54 and falls back to 40 between cases; a call takes about 0.1 ms (1.4 ms
    when it releases much). Allocators without malloc_trim are left alone."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    while True:
        await asyncio.sleep(TRIM_INTERVAL)
        trim(0)


def reopen_logs() -> None:
    """SIGUSR1 (logrotate's postrotate): log files are reopened at their configured paths."""
    SINK.reopen()
    for handler in audit_log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()  # the next line written opens the path afresh
    log.info("log files reopened")


def configure_logging(
    level: str, access_log_path: Path | None, audit_log_path: Path | None = None
) -> None:
    """Diagnostics to stderr; access lines to stdout or a file; audit lines to their file
    (or, without one, to stderr with the diagnostics)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    SINK.open(access_log_path)
    audit_log.setLevel(logging.INFO)
    if audit_log_path is not None:
        handler = logging.FileHandler(audit_log_path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        audit_log.addHandler(handler)
        audit_log.propagate = False
