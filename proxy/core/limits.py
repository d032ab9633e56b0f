"""Fair share: timeouts and caps that keep one client from starving the others.

Settings (`timeouts:` and `limits:` in the config) live here with the one piece of state they
need on the request path, `Gate`: how many requests each user and each client address has in
flight. A request over its share is answered 429 with `Retry-After` at once, before it can
hold an upstream connection; how long a request may wait for one is bounded too (503).
"""

from __future__ import annotations

import asyncio
import math
import resource
from dataclasses import dataclass

# Upstream connections per worker at most; fewer when the open-files limit is low.
UPSTREAM_CONNECTIONS = 512
OWN_SHARE = 16  # a sixteenth of them (at least 2) for the proxy's own requests
PER_USER_SHARE = 8  # by default one caller holds at most an eighth of the rest
RESERVED_FILES = 64  # log files, the config files being read, the mesh, the admin listener


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `connect`/`read` bound the upstream, `drain` the graceful shutdown, before
    which `drain_delay` lets load balancers see a stopping replica unready while it still
    serves; `keepalive` an idle client connection between requests, `header` the time a
    client has to send a request's headers, `handshake` the time to start and finish TLS,
    `client_idle` the time a client may leave its request body unsent or the response
    unread."""

    connect: float = 5.0
    read: float = 300.0
    drain: float = 30.0
    # Above what the shipped HAProxy config (deploy/haproxy) takes to mark a replica down
    # (2 checks 1 s apart) and what kube-proxy takes to drop a terminating pod.
    drain_delay: float = 5.0
    keepalive: float = 75.0
    header: float = 20.0
    handshake: float = 10.0
    client_idle: float = 60.0


@dataclass(frozen=True)
class Limits:
    """`limits:` in the config. `connections` and `upstream_connections` 0: derived from the
    open-files limit; `connections_per_address` 0: half of `connections`."""

    per_user: int = 128
    per_address: int = 256
    anonymous: int = 128  # requests without credentials in flight, from every address together
    anonymous_per_address: int = 32
    connections: int = 0
    connections_per_address: int = 0  # 0: half of `connections`
    upstream_connections: int = 0
    upstream_per_user: int = 0  # 0: an eighth of the upstream connections
    upstream_wait: float = 10.0
    min_rate: int = 4096  # bytes a second a body must move, window after window; 0: off


@dataclass(frozen=True)
class Capacity:
    """What one worker may hold open, from its open-files limit: client connections, and
    upstream connections (of which `own` for the proxy's own requests: tag checks, catalog
    pages, health probes)."""

    connections: int
    upstream: int

    @property
    def own(self) -> int:
        return max(2, self.upstream // OWN_SHARE)

    @property
    def forwarded(self) -> int:
        """Upstream connections for clients' requests."""
        return max(1, self.upstream - self.own)

    def per_user(self, limits: Limits) -> int:
        """Upstream connections one caller may hold at once."""
        return limits.upstream_per_user or max(1, self.forwarded // PER_USER_SHARE)


def capacity(limits: Limits, open_files: int) -> Capacity:
    """A quarter of the files for upstream connections (at most UPSTREAM_CONNECTIONS, or
    `limits.upstream_connections`), the rest, minus a reserve, for clients, so that accepting
    a client never fails for lack of a descriptor (`limits.connections` may only lower it)."""
    usable = max(16, open_files - RESERVED_FILES)
    upstream = max(4, min(UPSTREAM_CONNECTIONS, usable // 4))
    if limits.upstream_connections:
        upstream = min(usable // 2, limits.upstream_connections)
    clients = max(4, usable - upstream)
    if limits.connections:
        clients = min(clients, limits.connections)
    return Capacity(clients, upstream)


def address_share(connections: int, per_address: int) -> int:
    """How many of a worker's `connections` one client address may hold: `per_address` (0:
    half of them, so one address never holds them all), and never more than all of them."""
    return min(connections, per_address or max(1, connections // 2))


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (systemd's default soft limit is 1,024);
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Gate:
    """Requests in flight per user and per client address (one per worker process)."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def enter(self, key: str, limit: int) -> bool:
        """Count one more request under `key`, unless it already has `limit`."""
        count = self._in_flight.get(key, 0)
        if count >= limit:
            return False
        self._in_flight[key] = count + 1
        return True

    def leave(self, key: str) -> None:
        count = self._in_flight.get(key, 0) - 1
        if count > 0:
            self._in_flight[key] = count
        else:
            self._in_flight.pop(key, None)

    def __len__(self) -> int:
        return len(self._in_flight)


class FairSlots:
    """Upstream connections shared fairly: one owner (a user, or an anonymous address) holds
    at most its share; while every slot is taken, the next one freed goes to the waiter
    whose owner holds fewest (the first of those to come), so a newcomer never waits behind
    a heavy user's queue."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._held: dict[str, int] = {}
        self._in_use = 0
        self._waiting: list[tuple[str, int, asyncio.Future[None]]] = []

    async def acquire(self, owner: str, share: int, wait: float) -> bool:
        """Take a slot for `owner`, who may hold `share`, within `wait` seconds; False when
        none came."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (owner, share, ready)
        self._waiting.append(entry)
        self._hand_on()
        if ready.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(ready), wait)
            return True
        except TimeoutError:
            if ready.done():  # granted as the wait ran out: keep it
                return True
            self._waiting.remove(entry)
            self._hand_on()  # it may have held up others behind it
            return False

    def release(self, owner: str) -> None:
        count = self._held[owner] - 1
        if count:
            self._held[owner] = count
        else:
            del self._held[owner]
        self._in_use -= 1
        self._hand_on()

    def held(self, owner: str) -> int:
        return self._held.get(owner, 0)

    def _take(self, owner: str) -> None:
        self._held[owner] = self.held(owner) + 1
        self._in_use += 1

    def _hand_on(self) -> None:
        """Give free slots to the waiters that may take one, fewest held first."""
        while self._in_use < self.total:
            eligible = [(self.held(owner), n) for n, (owner, share, _) in enumerate(self._waiting)
                        if self.held(owner) < share]  # fmt: skip
            if not eligible:
                return
            owner, _, ready = self._waiting.pop(min(eligible)[1])
            self._take(owner)
            ready.set_result(None)


class Pace:
    """A transfer that must move `rate` bytes a second, each `window` seconds at a time: a
    peer reading (or sending) slower than that cannot hold a connection for ever."""

    def __init__(self, rate: float, window: float, now: float) -> None:
        self._quota = rate * window
        self._window = window
        self._end = now + window
        self._moved = 0.0

    def deadline(self) -> float:
        """When the move under way must be done: the end of the first window short of its
        quota (with no rate, never)."""
        if not self._quota:
            return math.inf
        return self._end if self._moved < self._quota else self._end + self._window

    def moved(self, size: int, now: float) -> bool:
        """Count `size` bytes moved by `now`; False when a window ended short of its quota."""
        if not self._quota:
            return True
        while now >= self._end:
            if self._moved < self._quota:
                return False
            self._moved = 0.0  # no credit carried over: a fast start buys no slow end
            self._end += self._window
        self._moved += size
        return True
