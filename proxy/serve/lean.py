"""Refusals answered as their request is parsed: a request the walk refuses before any step
that waits (without credentials: the anonymous `/v2/` request's 401) is answered from
`data_received`, without aiohttp's per-request task, writer and response preparation.

Only when aiohttp's loop on that connection waits for a request with none queued (so no
answer is overtaken), for a keep-alive HTTP/1.1 request without a body, `Expect`, upgrade or
credentials, while writing is not paused. The request is the one aiohttp would make, the
steps and the recording are the walk's (`Handler.refusal`), the bytes are the canned answer's
and the access line is aiohttp's `log_access`. Anything else, and any request after one that
is not answered here, goes to aiohttp's loop unchanged.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import hdrs
from aiohttp.http import HttpVersion11, RawRequestMessage, StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD

from ..http.listener import Connection, Connections
from ..observe.accesslog import LOGGED
from .handler import Handler

# The parts of aiohttp's RequestHandler (web_protocol.py) used here, as 3.14 has them: its
# loop `start()` awaits `_waiter` when `_messages` is empty and pops one message at a time;
# `data_received` sets `_waiter`'s result when it queued messages; after an answer the loop
# calls `_parser.message_consumed()`, counts `requests_count` and re-arms the keep-alive
# timer. tests/test_lean.py pins their source: a new aiohttp fails it until this is re-read.
SUPPORTED = aiohttp.__version__.startswith("3.14.")


class LeanConnection(Connection):
    """A client connection that answers immediate refusals itself."""

    def __init__(self, manager: LeanConnections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refusal = manager.refusal

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            super().data_received(data)  # a request is in flight or queued: its loop's turn
            return
        self._waiter = None  # parsed requests would wake aiohttp's loop: refusals go first
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        if self._close or self._force_close:
            waiter.cancel()  # what close() does to a waiter
            return
        while self._messages and self._answer(*self._messages[0]):
            pass
        if self._messages:
            waiter.set_result(None)  # the rest, in order, through aiohttp's loop
        else:
            self.answered()

    def _answer(self, message: Any, payload: Any) -> bool:
        """Answer the first queued request if the walk refuses it at once; False: not here."""
        transport = self.transport
        if (
            payload is not EMPTY_PAYLOAD  # a body (Content-Length > 0, chunked), or an error
            or not isinstance(message, RawRequestMessage)
            or message.should_close
            or message.upgrade
            or message.version != HttpVersion11
            or hdrs.AUTHORIZATION in message.headers
            or hdrs.EXPECT in message.headers
            or self._buffer_paused
            or self._paused  # the client does not read: answers wait for the transport
            or transport is None
            or transport.is_closing()
        ):
            return False
        loop = self._loop
        start = loop.time() if self._logging_enabled else None
        assert self._request_factory is not None
        writer = StreamWriter(self, loop)
        request = self._request_factory(message, payload, self, writer, self._task_handler)  # type: ignore[arg-type]
        if not request.keep_alive:  # a draining server closes each connection after its answer
            return False
        try:
            response = self._refusal(request)
        except Exception as exc:  # aiohttp's loop runs it again and answers 500
            self.log_exception("Error in the refusal path", exc_info=exc)
            return False
        if response is None:
            return False
        self._messages.popleft()
        assert self._parser is not None
        self._parser.message_consumed()
        assert self._manager is not None
        self._manager.requests_count += 1
        transport.write(response.data(request))
        self.log_access(request, response, start)
        del request[LOGGED]  # its context refers to it: both freed now, not by the cyclic GC
        # As aiohttp's loop does after a keep-alive answer.
        close_time = loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        return True


class LeanConnections(Connections):
    """The protocol factory, making `LeanConnection`s that ask `handler` for refusals."""

    connection = LeanConnection

    def __init__(self, handler: Handler, *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self.refusal = handler.refusal
