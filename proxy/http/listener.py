"""The client side of the socket: accepting, TLS, and the limits that hold before a request.

regproxy accepts connections itself rather than through `loop.create_server`, so that before
any TLS it can:
- look at the first byte: a client speaking plain HTTP to the TLS port (containerd does for
  `localhost:PORT`) gets a plain-HTTP 400 that names the problem, as nginx answers, instead of
  a closed connection;
- bound the time to start and finish the TLS handshake (`timeouts.handshake`);
- hand each new connection the TLS context of the current snapshot (a reloaded certificate
  applies to new connections, and is built off the event loop);
- keep the number of connections under what the open-files limit allows, evicting idle ones
  (those that never sent a byte first, then idle keep-alive ones) to make room for a new one.

`Connection` is aiohttp's request handler plus a header timeout: a request's headers must be
complete within `timeouts.header` of its first byte (or of the connection's start), so a
client trickling one header line a second is cut, while the keep-alive timeout still governs
idle time between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from ..core.limits import Timeouts

log = logging.getLogger("regproxy.listener")

TLS_RECORD = b"\x16"  # a TLS handshake record: the first byte of every ClientHello
ACCEPTS_PER_WAKEUP = 64
_PLAIN_BODY = b"The plain HTTP request was sent to HTTPS port\n"
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nServer: regproxy\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_PLAIN_BODY), _PLAIN_BODY)
)
HEADER_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nServer: regproxy\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class Connection(RequestHandler):
    """One client connection: aiohttp's handler, with a header timeout, known to its Listener."""

    def __init__(self, manager: Connections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = manager.listener
        self._header_timeout = manager.header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.opened(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._listener.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # headers complete
        elif self._header_timer is None and self.waiting_for_request:
            self._arm()

    @property
    def waiting_for_request(self) -> bool:
        """Between requests: no request being handled or queued (idle keep-alive, or the
        headers of the next one arriving)."""
        if self._messages or self._request_in_progress:
            return False
        return self._request_count == 0 or (self._waiter is not None and not self._waiter.done())

    def _arm(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A request aiohttp cannot parse is the client's mistake, answered 400: one line
        without a traceback (aiohttp logs an ERROR with one, so any client could fill the
        log). The proxy's own failures keep theirs."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            why = exc.message.partition("\n")[0].rstrip(":") if exc.message else type(exc)
            log.info("malformed request from %s: %s", _host(peer), why)
            return
        super().log_exception(*args, **kw)

    def _header_expired(self) -> None:
        self._header_timer = None
        if not self.waiting_for_request or self.transport is None:
            return
        peer = self.transport.get_extra_info("peername")
        log.info("closing connection from %s: request headers not complete in time", peer)
        self.transport.write(HEADER_TIMEOUT_ANSWER)
        self.force_close()


class Connections(web.Server):
    """aiohttp's low-level server (the protocol factory), making `Connection`s. While
    `closing()` holds (a stopping replica, still serving), every answer says `Connection:
    close` and its connection is closed after it, so clients open their next one through the
    load balancer, to a replica that stays."""

    def __init__(
        self,
        handler: Any,
        listener: Listener,
        header_timeout: float,
        closing: Callable[[], bool],
        **kwargs: Any,
    ):
        super().__init__(handler, **kwargs)
        self.listener = listener
        self.header_timeout = header_timeout
        self._closing = closing

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if self._closing():  # as if the client had asked: aiohttp then answers and closes
            message = message._replace(should_close=True)
        return super()._make_request(message, payload, protocol, writer, task)


class _Unstarted:
    """An accepted socket that has not sent its first byte yet."""

    def __init__(self, sock: socket.socket, peer: Any, timer: asyncio.TimerHandle) -> None:
        self.sock = sock
        self.peer = peer
        self.timer = timer


class Listener:
    """Accepts on a bound, listening socket (shared by every worker)."""

    def __init__(
        self,
        sock: socket.socket,
        tls: Callable[[], ssl.SSLContext | None],
        timeouts: Timeouts,
        capacity: int,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._timeouts = timeouts
        self.capacity = capacity
        self._loop = asyncio.get_running_loop()
        self._unstarted: OrderedDict[int, _Unstarted] = OrderedDict()
        self._handshaking = 0
        self._live: OrderedDict[Connection, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocol: Callable[[], Connection] | None = None
        self._accepting = False

    @property
    def open(self) -> int:
        """Client connections this worker holds, in every stage."""
        return len(self._unstarted) + self._handshaking + len(self._live)

    def start(self, protocol: Callable[[], Connection]) -> None:
        self._protocol = protocol
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._accepting = True

    def stop(self) -> None:
        """Stop accepting and close this process's copy of the listening socket; connections
        not yet started are closed (in-flight ones stay)."""
        if self._accepting:
            self._loop.remove_reader(self._sock.fileno())
            self._accepting = False
            self._sock.close()
        for fd in list(self._unstarted):
            self._drop(fd)
        for task in self._tasks:
            task.cancel()

    def opened(self, connection: Connection) -> None:
        self._live[connection] = None

    def closed(self, connection: Connection) -> None:
        self._live.pop(connection, None)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: back off until a connection closes
                log.error("cannot accept a connection: %s", exc)
                return
            if self.open >= self.capacity and not self._evict():
                log.warning("connection from %s refused: %d connections open", peer, self.open)
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            timer = self._loop.call_later(self._timeouts.handshake, self._expired, fd)
            self._unstarted[fd] = _Unstarted(conn, peer, timer)
            self._loop.add_reader(fd, self._first_byte, fd)

    def _evict(self) -> bool:
        """Close the oldest idle connection (never started first): True if one was closed."""
        if self._unstarted:
            self._drop(next(iter(self._unstarted)))
            return True
        for connection in self._live:
            if connection.waiting_for_request:
                log.info("closing an idle connection to make room for a new one")
                self._live.pop(connection)
                connection.force_close()
                return True
        return False

    def _drop(self, fd: int) -> socket.socket:
        """Forget an unstarted socket (and close it, unless the caller takes it over)."""
        waiting = self._unstarted.pop(fd)
        waiting.timer.cancel()
        self._loop.remove_reader(fd)
        waiting.sock.close()
        return waiting.sock

    def _expired(self, fd: int) -> None:
        if fd in self._unstarted:
            log.debug("closing a connection that did not start TLS in time")
            self._drop(fd)

    def _first_byte(self, fd: int) -> None:
        waiting = self._unstarted.get(fd)
        if waiting is None:
            return
        try:
            first = waiting.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        if not first:
            self._drop(fd)
            return
        del self._unstarted[fd]
        waiting.timer.cancel()
        self._loop.remove_reader(fd)
        if first == TLS_RECORD:
            self._spawn(self._start_tls(waiting.sock))
        else:
            self._spawn(self._plain_http(waiting.sock, waiting.peer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_tls(self, sock: socket.socket) -> None:
        assert self._protocol is not None
        context = self._tls()
        self._handshaking += 1
        try:
            await self._loop.connect_accepted_socket(
                self._protocol,
                sock,
                ssl=context,
                ssl_handshake_timeout=self._timeouts.handshake if context else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            log.debug("TLS handshake failed: %r", exc)
            sock.close()
        finally:
            self._handshaking -= 1

    async def _plain_http(self, sock: socket.socket, peer: Any) -> None:
        """Answer 400 in plain HTTP, let the client read it, then close."""
        log.info("plain HTTP request on the TLS port from %s: answered 400", _host(peer))
        try:
            async with asyncio.timeout(self._timeouts.handshake):
                await self._loop.sock_sendall(sock, PLAIN_HTTP_ANSWER)
                sock.shutdown(socket.SHUT_WR)
                while await self._loop.sock_recv(sock, 4096):
                    pass  # read what the client sent, so closing does not reset the answer
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
