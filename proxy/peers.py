"""Failed and successful logins shared between worker processes.

Each worker throttles with its own `Throttle`; with N workers an address could otherwise make
N x `throttle.attempts` guesses before every worker locks it. Before forking, the parent makes
one datagram socket pair per worker (`Mesh`); a worker tells every other worker about each
failure and success it sees (`SharedThrottle`), and applies theirs as if it had seen them
itself. Datagrams arrive before the guesser's next connection has finished its TLS handshake.
Checks still under way stay local: a burst of guesses sent all at once can reach each worker
before any of them has failed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import Throttle as Settings
from .throttle import Throttle

log = logging.getLogger("regproxy.peers")

FAILURE, SUCCESS = b"F", b"S"
_HEADER = struct.Struct("!cH")  # kind, length of the user name in bytes
MAX_DATAGRAM = 16 * 1024  # a user name from a Basic header is at most 4 KiB


@dataclass(frozen=True)
class Peers:
    """One worker's end: where the others write to it, and where it writes to them."""

    inbox: socket.socket
    outboxes: tuple[socket.socket, ...]


class Mesh:
    """Made in the parent before forking; `peers(i)` in worker i."""

    def __init__(self, workers: int) -> None:
        self._pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(workers)]
        for inbox, outbox in self._pairs:
            inbox.setblocking(False)
            outbox.setblocking(False)

    def peers(self, index: int) -> Peers:
        others = tuple(out for i, (_, out) in enumerate(self._pairs) if i != index)
        return Peers(self._pairs[index][0], others)

    def close(self) -> None:
        for inbox, outbox in self._pairs:
            inbox.close()
            outbox.close()


def encode(kind: bytes, user: str, address: str) -> bytes:
    name = user.encode("utf-8", "surrogateescape")
    return _HEADER.pack(kind, len(name)) + name + address.encode("utf-8", "surrogateescape")


def decode(datagram: bytes) -> tuple[bytes, str, str] | None:
    """(kind, user, address), or None for anything malformed (never raises)."""
    if len(datagram) < _HEADER.size:
        return None
    kind, length = _HEADER.unpack_from(datagram)
    name = datagram[_HEADER.size : _HEADER.size + length]
    if kind not in (FAILURE, SUCCESS) or len(name) != length:
        return None
    address = datagram[_HEADER.size + length :]
    return kind, name.decode("utf-8", "surrogateescape"), address.decode("utf-8", "replace")


class SharedThrottle(Throttle):
    """A Throttle that also counts what the other workers saw."""

    def __init__(
        self, settings: Settings, peers: Peers, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(settings)
        self._peers = peers
        self._clock = clock

    def failure(self, user: str, address: str, now: float) -> None:
        super().failure(user, address, now)
        self._tell(encode(FAILURE, user, address))

    def success(self, user: str, address: str) -> None:
        """Every authenticated request ends here: only a new (user, address) is news."""
        news = not self.known_good(user, address)
        super().success(user, address)
        if news:
            self._tell(encode(SUCCESS, user, address))

    def _tell(self, datagram: bytes) -> None:
        for outbox in self._peers.outboxes:
            try:
                outbox.send(datagram)
            except OSError as exc:  # full queue (a stalled worker) or gone: it will not know
                log.debug("could not tell a worker about a login: %s", exc)

    def receive(self) -> int:
        """Apply every datagram waiting in the inbox; how many were applied."""
        applied = 0
        while True:
            try:
                datagram = self._peers.inbox.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return applied
            event = decode(datagram)
            if event is None:
                continue
            kind, user, address = event
            if kind == FAILURE:
                Throttle.failure(self, user, address, self._clock())
            else:
                Throttle.success(self, user, address)
            applied += 1

    def listen(self) -> Callable[[], object]:
        """Apply datagrams as they arrive on the running loop; returns the way to stop."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._peers.inbox.fileno(), self.receive)
        return lambda: loop.remove_reader(self._peers.inbox.fileno())
