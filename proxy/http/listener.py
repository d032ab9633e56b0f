"""The client side of the socket: accepting, TLS, and the limits that hold before a request.

regproxy accepts connections itself (not `loop.create_server`) so that before any TLS it can
answer plain HTTP on the TLS port with a plain-HTTP 400, bound the handshake, hand each
connection the current snapshot's TLS context, and evict idle connections to stay within the
open-files limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from ..core.limits import Timeouts, address_share
from .framing import Framing, Head

log = logging.getLogger("regproxy.listener")

TLS_RECORD = b"\x16"  # a TLS handshake record: the first byte of every ClientHello
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
        self._framing = Framing()
        self._body: StreamReader | None = None  # the body being read, if one is

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.opened(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._listener.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before, body = self._request_count, self._body
        taken = body.total_bytes if body is not None else 0
        super().data_received(data)
        read = self._request_count - before
        new = itertools.islice(self._messages, len(self._messages) - read, None) if read else ()
        heads = [_head(message, payload) for message, payload in new]
        took = body.total_bytes - taken if body is not None else 0
        done = body is not None and body.is_eof()
        self._framing.received(data, took, done, heads)
        if heads:
            payload = self._messages[-1][1]
            self._body = None if payload.is_eof() else payload
        elif done:
            self._body = None
        if read:
            self._disarm()  # headers complete
        elif self._header_timer is None and self.waiting_for_request and self._framing.pending:
            self._arm()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """After each answer, a pipelined request held meanwhile gets its header timeout."""
        finished = await super().finish_response(request, resp, start_time)
        if self._framing.pending and not self._messages and self._header_timer is None:
            self._arm()
        return finished

    @property
    def waiting_for_request(self) -> bool:
        """No request being handled or queued (idle keep-alive, or the next one arriving)."""
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
        """A request aiohttp cannot parse: one line, no traceback; the proxy's own failures
        keep theirs."""
        # aiohttp logs an ERROR with a traceback: any client could fill the log.
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
    """aiohttp's low-level server (the protocol factory), making `Connection`s."""

    # While `closing()` holds (a stopping replica, still serving), every answer says
    # `Connection: close`: clients open their next one through the load balancer, to a
    # replica that stays.

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

    def __init__(self, sock: socket.socket, address: str, timer: asyncio.TimerHandle) -> None:
        self.sock = sock
        self.address = address
        self.timer = timer


class _Handshake:
    """A connection whose TLS handshake is under way (or stalled)."""

    def __init__(self, fd: int, address: str) -> None:
        self.fd = fd
        self.address = address
        self.task: asyncio.Task[None] | None = None


Held = _Unstarted | _Handshake | Connection  # a connection in one of its stages


class Listener:
    """Accepts on a bound, listening socket (shared by every worker), within `capacity`
    connections and `per_address` for one client address (0: half)."""

    def __init__(
        self,
        sock: socket.socket,
        tls: Callable[[], ssl.SSLContext | None],
        timeouts: Timeouts,
        capacity: int,
        per_address: int = 0,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._timeouts = timeouts
        self.capacity = capacity
        self.per_address = address_share(capacity, per_address)
        self._loop = asyncio.get_running_loop()
        self._unstarted: OrderedDict[int, _Unstarted] = OrderedDict()
        self._handshakes: OrderedDict[int, _Handshake] = OrderedDict()
        self._live: OrderedDict[Connection, str] = OrderedDict()  # -> its client's address
        self._addresses: dict[str, OrderedDict[Held, None]] = {}  # each one's, oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocol: Callable[[], Connection] | None = None
        self._accepting = False

    @property
    def open(self) -> int:
        """Client connections this worker holds, in every stage."""
        return len(self._unstarted) + len(self._handshakes) + len(self._live)

    def start(self, protocol: Callable[[], Connection]) -> None:
        self._protocol = protocol
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._accepting = True

    def stop(self) -> None:
        """Stop accepting and close connections not yet started (in-flight ones stay)."""
        if self._accepting:
            self._loop.remove_reader(self._sock.fileno())
            self._accepting = False
            self._sock.close()
        for fd in list(self._unstarted):
            self._drop(fd)
        for task in self._tasks:
            task.cancel()

    def opened(self, connection: Connection) -> None:
        """A connection whose handshake is done (or that needs none) serves requests."""
        transport = connection.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        handshake = self._handshakes.pop(sock.fileno(), None) if sock is not None else None
        if handshake is not None:
            self._forget(handshake.address, handshake)
            address = handshake.address
        else:
            address = _host(transport.get_extra_info("peername") if transport else None)
        self._live[connection] = address
        self._track(address, connection)

    def closed(self, connection: Connection) -> None:
        address = self._live.pop(connection, None)
        if address is not None:
            self._forget(address, connection)

    def _accept(self) -> None:
        # One connection per wakeup: every worker polls the shared listening socket, and one
        # that took all it could took a burst (a client's pool opening 64 at once) for itself,
        # leaving the other workers idle for as long as those connections live. Woken alike,
        # the workers now take turns.
        try:
            conn, peer = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: back off until a connection closes
            log.error("cannot accept a connection: %s", exc)
            return
        address = _host(peer)
        held = len(self._addresses.get(address, ()))
        if held >= self.per_address and not self._evict(self._addresses[address]):
            log.warning("connection from %s refused: it holds %d connections", address, held)
            conn.close()
            return
        if self.open >= self.capacity and not self._evict_any():
            log.warning("connection from %s refused: %d connections open", address, self.open)
            conn.close()
            return
        conn.setblocking(False)
        fd = conn.fileno()
        timer = self._loop.call_later(self._timeouts.handshake, self._expired, fd)
        self._unstarted[fd] = waiting = _Unstarted(conn, address, timer)
        self._track(address, waiting)
        self._loop.add_reader(fd, self._first_byte, fd)

    def _evict_any(self) -> bool:
        """Close the oldest idle connection to make room; True if one was closed."""
        # First one that never sent a byte, then a TLS handshake (a stalled one is the
        # oldest), then an idle keep-alive one.
        for stage in (self._unstarted.values(), self._handshakes.values(), self._live):
            if self._evict(stage):
                return True
        return False

    def _evict(self, held: Iterable[Held]) -> bool:
        """Close the oldest idle connection among `held`; True if one was closed."""
        for kind in (_Unstarted, _Handshake, Connection):
            for connection in held:
                if isinstance(connection, kind) and self._close_idle(connection):
                    return True
        return False

    def _close_idle(self, held: Held) -> bool:
        if isinstance(held, _Unstarted):
            self._drop(held.sock.fileno())
        elif isinstance(held, _Handshake):
            log.info("closing a TLS handshake from %s to make room", held.address)
            del self._handshakes[held.fd]
            self._forget(held.address, held)
            if held.task is not None:
                held.task.cancel()  # it closes the socket
        elif held.waiting_for_request:
            log.info("closing an idle connection to make room for a new one")
            self.closed(held)
            held.force_close()
        else:
            return False
        return True

    def _track(self, address: str, held: Held) -> None:
        self._addresses.setdefault(address, OrderedDict())[held] = None

    def _forget(self, address: str, held: Held) -> None:
        mine = self._addresses.get(address)
        if mine is not None:
            mine.pop(held, None)
            if not mine:
                del self._addresses[address]

    def _drop(self, fd: int) -> socket.socket:
        """Forget an unstarted socket (and close it, unless the caller takes it over)."""
        waiting = self._unstarted.pop(fd)
        self._forget(waiting.address, waiting)
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
        self._forget(waiting.address, waiting)
        waiting.timer.cancel()
        self._loop.remove_reader(fd)
        if first == TLS_RECORD:
            handshake = self._handshakes[fd] = _Handshake(fd, waiting.address)
            self._track(waiting.address, handshake)
            handshake.task = self._spawn(self._start_tls(waiting.sock, handshake), waiting.sock)
        else:
            self._spawn(self._plain_http(waiting.sock, waiting.address), waiting.sock)

    def _spawn(self, coro: Coroutine[Any, Any, None], sock: socket.socket) -> asyncio.Task[None]:
        """Run `coro`, which owns `sock` (and closes it when it fails or is cancelled)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(_close_unstarted, sock))
        return task

    async def _start_tls(self, sock: socket.socket, handshake: _Handshake) -> None:
        assert self._protocol is not None
        context = self._tls()
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
            if self._handshakes.get(handshake.fd) is handshake:  # not handed over, nor evicted
                del self._handshakes[handshake.fd]
                self._forget(handshake.address, handshake)

    async def _plain_http(self, sock: socket.socket, address: str) -> None:
        """Answer 400 in plain HTTP, let the client read it, then close."""
        log.info("plain HTTP request on the TLS port from %s: answered 400", address)
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


def _close_unstarted(sock: socket.socket, task: asyncio.Task[None]) -> None:
    """Close the socket of a task cancelled before it ever ran (it never reached its own close)."""
    if task.cancelled():
        sock.close()


def _head(message: Any, payload: StreamReader) -> Head:
    """What the framing needs of a request whose headers the parser read."""
    if getattr(message, "chunked", True):  # _ErrInfo (a refused request) has none
        return Head(None, payload.total_bytes, payload.is_eof())
    try:
        length = int(message.headers.get("Content-Length") or 0)
    except ValueError:
        return Head(None, payload.total_bytes, payload.is_eof())
    return Head(length, payload.total_bytes, payload.is_eof())


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
