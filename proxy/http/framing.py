"""Whether a client connection holds bytes of a request whose headers are not complete, so
the header timeout runs for pipelined requests too. Pure."""

# A client that sends a request and the start of another in one write, then nothing, must be
# cut `timeouts.header` after the first is answered, as Go's server does. aiohttp's C parser
# keeps such a start to itself, so `Framing` follows the same bytes with what the parser made
# of them and finds where each request ends: a header block at the first CRLF CRLF (past empty
# lines the parser skips); a Content-Length body that many bytes later, counting what its
# reader did not take yet; a chunked body only where the bytes end with CRLF CRLF (more after
# it would have made another header block). When it cannot tell, a request is pending: at
# worst an idle connection is closed sooner than the keep-alive timeout would.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

END = b"\r\n\r\n"
MAX_HELD = 64 * 1024  # bytes of unfinished header blocks kept; more: it cannot tell


@dataclass(frozen=True)
class Head:
    """A request whose headers the parser read in this call."""

    length: int | None  # of its body; None: chunked
    took: int  # body bytes taken so far
    done: bool  # the body is complete


class Framing:
    """One connection's bytes so far, against the requests the parser read from them."""

    def __init__(self) -> None:
        self._held = b""  # since the last request's end: the next header block, so far
        self._body: int | bool | None = False  # False: no open body; None: chunked; an int
        self._spare = 0  # an open Content-Length body: bytes received it has not taken
        self._lost = False  # cannot tell until the bytes end where a request ends
        self._last4 = b""

    @property
    def pending(self) -> bool:
        """Bytes of a request whose headers are not complete are held (or it cannot tell)."""
        return self._lost or bool(self._held.strip(b"\r\n"))

    def received(self, data: bytes, took: int, done: bool, heads: Sequence[Head]) -> None:
        """`data` went to the parser: the open body took `took` bytes of it, `heads` were read."""
        self._last4 = (self._last4 + data[-4:])[-4:]
        if self._lost:
            self._resync(heads)
            return
        if self._body is False:
            self._walk(self._held + data, heads)
            return
        if self._body is None:  # chunked: its end is where the bytes end, or not known
            if done and not heads and self._last4 == END:
                self._body, self._held = False, b""
            elif done:
                self._lose(heads)
            return
        self._spare += len(data) - took
        if not done:
            return
        if not 0 <= self._spare <= len(data):  # the bytes after it came before: not kept
            self._lose(heads)
            return
        self._body, after = False, self._spare
        self._walk(data[len(data) - after :] if after else b"", heads)

    def _walk(self, held: bytes, heads: Sequence[Head]) -> None:
        """Follow `held` (from a request's end on) through the requests read from it."""
        position = 0
        for number, head in enumerate(heads, 1):
            while held.startswith(b"\r\n", position):
                position += 2
            end = held.find(END, position)
            if end < 0:
                self._lose(heads)
                return
            position = end + len(END)
            if not head.done:
                self._body, self._held = head.length, b""
                if head.length is not None:
                    self._spare = len(held) - position - head.took
                return
            if head.length is None:  # a chunked body ended: where is not counted
                self._held = b""
                if number != len(heads) or self._last4 != END:
                    self._lose(heads)
                return
            position += head.length
            if position > len(held):
                self._lose(heads)
                return
        self._held = held[position:]
        if len(self._held) > MAX_HELD:
            self._lose(heads)

    def _lose(self, heads: Sequence[Head]) -> None:
        self._lost, self._held, self._body = True, b"", False
        self._resync(heads)

    def _resync(self, heads: Sequence[Head]) -> None:
        """Back on track when the bytes end where a request with no counted body ends."""
        last = heads[-1] if heads else None
        if last is not None and last.done and not last.length and self._last4 == END:
            self._lost, self._held, self._body = False, b"", False
        elif last is not None and not last.done:
            self._body = False  # still lost: the open body's end is not known
