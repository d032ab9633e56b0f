"""The state store: how a process shares what it saw with the others (the seam for replicas).

The request path only ever talks to local state (the throttle's counts, the blob existence
cache) and publishes events; a store carries those events to the other workers and, when a
shared backend is configured, to the other replicas, and hands theirs to its subscribers.
`LocalStore` is the default: in-process, plus the worker mesh (`proxy.peers`) when there are
several workers. Publishing never blocks and never fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from .events import Event, decode, encode
from .peers import Peers

log = logging.getLogger("regproxy.store")

Subscriber = Callable[[Event], None]


class Store(Protocol):
    """Events out to every other process, theirs in to the subscribers."""

    def publish(self, event: Event) -> None:
        """Tell the others (fire and forget; the caller has applied it locally already)."""
        ...

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` with every event another process published."""
        ...

    def sync(self) -> None:
        """Apply, now, every event that has already arrived (cheap; never waits): called before
        answering from local state that an event could have made stale."""
        ...

    async def start(self) -> None:
        """Begin receiving (on the running loop)."""
        ...

    async def close(self) -> None: ...


class LocalStore:
    """This process, plus the other workers of this machine when there are several."""

    def __init__(self, peers: Peers | None = None) -> None:
        self._peers = peers
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(self, event: Event) -> None:
        if self._peers is not None:
            self._peers.send(encode(event))

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def sync(self) -> None:
        self.deliver()

    def deliver(self) -> int:
        """Hand every waiting event to the subscribers; how many were delivered."""
        if self._peers is None:
            return 0
        delivered = 0
        for datagram in self._peers.receive():
            event = decode(datagram)
            if event is None:
                continue
            for subscriber in self._subscribers:
                subscriber(event)
            delivered += 1
        return delivered

    async def start(self) -> None:
        if self._peers is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._peers.inbox.fileno(), self.deliver)

    async def close(self) -> None:
        if self._loop is not None and self._peers is not None:
            self._loop.remove_reader(self._peers.inbox.fileno())
            self._loop = None
