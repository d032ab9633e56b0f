"""The worker mesh: one datagram socket pair per worker, made by worker 0; each worker
writes its events to every other worker's inbox."""

# Datagrams on a local socket arrive before a client's next connection has finished its TLS
# handshake: what one worker saw holds in all of them.

from __future__ import annotations

import errno
import logging
import secrets
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .events import MAX_EVENT, Counted, Event, encode

log = logging.getLogger("regproxy.peers")


BACKLOG = 10_000  # events, and counts' keys, kept for one full inbox; past it new ones go
_AGAIN = (BlockingIOError, InterruptedError)  # nothing to read, or no room: not now


@dataclass
class _Backlog:
    """What one full inbox refused (its worker's loop stalled): counts added up per key and
    window, so they take one datagram each however many requests made them; other events in
    order."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    events: deque[bytes] = field(default_factory=deque)
    dropping: bool = False  # said once per stall

    def keep(self, event: Event, datagram: bytes) -> None:
        if isinstance(event, Counted):
            key = (event.key, event.expires)
            if key in self.counts or len(self.counts) < BACKLOG:
                self.counts[key] = self.counts.get(key, 0) + int(event.amount)
                return
        elif len(self.events) < BACKLOG:
            self.events.append(datagram)
            return
        if not self.dropping:
            self.dropping = True
            log.warning("worker mesh: a worker has read nothing while %d events were told to "
                        "it; what it is told now is lost", BACKLOG)  # fmt: skip

    def drain(self, outbox: socket.socket) -> int:
        """Send as much as the inbox takes: how many datagrams went."""
        went = 0
        while self.counts:
            (key, expires), amount = self.counts.popitem()  # any order: counts add up
            if not amount:
                continue
            if not _sent(outbox, encode(Counted(key, expires, str(amount)))):
                self.counts[key, expires] = amount
                return went
            went += 1
        while self.events:
            if not _sent(outbox, self.events[0]):
                return went
            self.events.popleft()
            went += 1
        return went

    @property
    def empty(self) -> bool:
        return not self.counts and not self.events


@dataclass(frozen=True)
class Peers:
    """One worker's end: where the others write to it, and where it writes to them."""

    inbox: socket.socket
    outboxes: tuple[socket.socket, ...]
    # Per outbox, what its full inbox refused: sent before anything newer, at the next send
    # or flush, so no count is lost on the way.
    _waiting: dict[int, _Backlog] = field(default_factory=dict, repr=False, compare=False)

    @property
    def waiting(self) -> bool:
        """Whether a full inbox refused something not yet sent again."""
        return bool(self._waiting)

    def send(self, event: Event) -> None:
        datagram = encode(event)
        for index, outbox in enumerate(self.outboxes):
            backlog = self._waiting.get(index)
            if backlog is not None:  # what was refused before goes first
                backlog.keep(event, datagram)
                self._drain(index, outbox, backlog)
            elif not _sent(outbox, datagram):
                self._waiting[index] = backlog = _Backlog()
                backlog.keep(event, datagram)

    def flush(self) -> bool:
        """Send what full inboxes refused, as far as they take it now; whether any went."""
        went = 0
        for index, backlog in list(self._waiting.items()):
            went += self._drain(index, self.outboxes[index], backlog)
        return went > 0

    def _drain(self, index: int, outbox: socket.socket, backlog: _Backlog) -> int:
        went = backlog.drain(outbox)
        if backlog.empty:
            del self._waiting[index]
        return went

    def receive(self) -> list[bytes]:
        """Every datagram waiting in the inbox."""
        datagrams = []
        while True:
            try:
                datagrams.append(self.inbox.recv(MAX_EVENT))
            except _AGAIN:
                return datagrams


def _sent(outbox: socket.socket, datagram: bytes) -> bool:
    """False when the inbox has no room (to be sent again); any other failure loses it."""
    try:
        outbox.send(datagram)
    except _AGAIN:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOBUFS, errno.ENOMEM):  # for now: as a full inbox
            return False
        log.debug("could not tell a worker: %s", exc)
    return True


def _key() -> bytes:
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class Siblings:
    """What a worker shares with the other workers of its `serve`."""

    index: int | None = None  # None when it is alone
    peers: Peers | None = None
    lock_dir: Path | None = None
    # Keys with which one worker reads another's signatures and hashes.
    catalog_key: bytes = field(default_factory=_key, repr=False)
    upload_key: bytes = field(default_factory=_key, repr=False)
    credentials_key: bytes = field(default_factory=_key, repr=False)
