"""The worker mesh: one datagram socket pair per worker, made by worker 0; each worker
writes its events to every other worker's inbox."""

# Datagrams on a local socket arrive before a client's next connection has finished its TLS
# handshake: what one worker saw holds in all of them.

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .events import MAX_EVENT

log = logging.getLogger("regproxy.peers")


@dataclass(frozen=True)
class Peers:
    """One worker's end: where the others write to it, and where it writes to them."""

    inbox: socket.socket
    outboxes: tuple[socket.socket, ...]

    def send(self, datagram: bytes) -> None:
        for outbox in self.outboxes:
            try:
                outbox.send(datagram)
            except OSError as exc:  # full queue (a stalled worker) or gone: it will not know
                log.debug("could not tell a worker: %s", exc)

    def receive(self) -> list[bytes]:
        """Every datagram waiting in the inbox."""
        datagrams = []
        while True:
            try:
                datagrams.append(self.inbox.recv(MAX_EVENT))
            except (BlockingIOError, InterruptedError):
                return datagrams


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
