"""The worker mesh: one datagram socket pair per worker, made by worker 0; each worker
writes its events to every other worker's inbox."""

# Datagrams on a local socket arrive before a client's next connection has finished its TLS
# handshake: what one worker saw holds in all of them.

from __future__ import annotations

import logging
import secrets
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .events import MAX_EVENT

log = logging.getLogger("regproxy.peers")


BACKLOG = 10_000  # datagrams kept for a worker whose inbox is full; past it the oldest go


@dataclass(frozen=True)
class Peers:
    """One worker's end: where the others write to it, and where it writes to them."""

    inbox: socket.socket
    outboxes: tuple[socket.socket, ...]
    # What a full inbox refused (its worker's loop stalled while the others counted), per
    # outbox: sent first at the next send or receive, so no count is lost on the way.
    _waiting: dict[int, deque[bytes]] = field(default_factory=dict, repr=False)
    _dropping: set[int] = field(default_factory=set, repr=False)  # said once per stall

    @property
    def waiting(self) -> bool:
        """Whether a full inbox refused something not yet sent again."""
        return bool(self._waiting)

    def send(self, datagram: bytes) -> None:
        for index, outbox in enumerate(self.outboxes):
            waiting = self._waiting.get(index)
            if waiting is not None:
                self._keep(index, waiting, datagram)
                self._drain(index, outbox, waiting)
            elif not _sent(outbox, datagram):
                self._waiting[index] = deque([datagram], maxlen=BACKLOG)

    def flush(self) -> None:
        """Send what full inboxes refused, as far as they take it now."""
        if self._waiting:
            for index, waiting in list(self._waiting.items()):
                self._drain(index, self.outboxes[index], waiting)

    def _keep(self, index: int, waiting: deque[bytes], datagram: bytes) -> None:
        if len(waiting) == BACKLOG and index not in self._dropping:
            self._dropping.add(index)
            log.warning("worker mesh: a worker has read nothing while %d events were told; "
                        "the oldest are dropped", BACKLOG)  # fmt: skip
        waiting.append(datagram)

    def _drain(self, index: int, outbox: socket.socket, waiting: deque[bytes]) -> None:
        while waiting:
            if not _sent(outbox, waiting[0]):
                return
            waiting.popleft()
        del self._waiting[index]
        self._dropping.discard(index)

    def receive(self) -> list[bytes]:
        """Every datagram waiting in the inbox."""
        datagrams = []
        while True:
            try:
                datagrams.append(self.inbox.recv(MAX_EVENT))
            except (BlockingIOError, InterruptedError):
                return datagrams


def _sent(outbox: socket.socket, datagram: bytes) -> bool:
    """False when the inbox is full (to be sent again); a send that fails otherwise is lost."""
    try:
        outbox.send(datagram)
    except BlockingIOError:
        return False
    except OSError as exc:
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
