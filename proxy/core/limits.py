"""Fair share: the `timeouts:` and `limits:` settings, and the counters that keep one client
from starving the others (`Gate`, `FairSlots`, `Pace`, `Watchdog`)."""

from __future__ import annotations

import asyncio
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass

# Upstream connections per worker at most; fewer when the open-files limit is low.
UPSTREAM_CONNECTIONS = 512
OWN_SHARE = 16  # a sixteenth of them (at least 2) for the proxy's own requests
PER_USER_SHARE = 8  # by default one caller holds at most an eighth of the rest
RESERVED_FILES = 64  # log files, the config files being read, the mesh, the admin listener


@dataclass(frozen=True)
class Timeouts:
    """`timeouts:` in the config, in seconds."""

    connect: float = 5.0  # to the upstream
    read: float = 300.0  # from the upstream
    drain: float = 30.0  # the graceful shutdown
    # Stopping replicas still serve this long, unready, so load balancers leave them first:
    # above what the shipped HAProxy config (deploy/haproxy) takes to mark a replica down
    # (2 checks 1 s apart) and what kube-proxy takes to drop a terminating pod.
    drain_delay: float = 5.0
    keepalive: float = 75.0  # an idle client connection between requests
    header: float = 20.0  # for a client to send a request's headers
    handshake: float = 10.0  # to start and finish TLS
    client_idle: float = 60.0  # a request body left unsent, or the response unread


@dataclass(frozen=True)
class Limits:
    """`limits:` in the config."""

    per_user: int = 128
    per_address: int = 256
    anonymous: int = 128  # requests without credentials in flight, from every address together
    anonymous_per_address: int = 32
    connections: int = 0  # 0: from the open-files limit
    connections_per_address: int = 0  # 0: half of `connections`
    upstream_connections: int = 0  # 0: from the open-files limit
    upstream_per_user: int = 0  # 0: an eighth of the upstream connections
    upstream_wait: float = 10.0
    min_rate: int = 4096  # bytes a second a body must move, window after window; 0: off


@dataclass(frozen=True)
class Capacity:
    """What one worker may hold open: client connections, and upstream connections (of which
    `own` for the proxy's own requests)."""

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
    """A quarter of the open files for upstream connections, the rest for clients."""
    # The reserve: accepting a client never fails for lack of a descriptor.
    usable = max(16, open_files - RESERVED_FILES)
    upstream = max(4, min(UPSTREAM_CONNECTIONS, usable // 4))
    if limits.upstream_connections:
        upstream = min(usable // 2, limits.upstream_connections)
    clients = max(4, usable - upstream)
    if limits.connections:  # may only lower it
        clients = min(clients, limits.connections)
    return Capacity(clients, upstream)


def address_share(connections: int, per_address: int) -> int:
    """How many of a worker's `connections` one client address may hold (`per_address` 0:
    half, so one address never holds them all)."""
    return min(connections, per_address or max(1, connections // 2))


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one; the soft limit now in force."""
    # systemd's default soft limit is 1,024.
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
    """Upstream connections shared fairly: an owner (a user, or an anonymous address) holds at
    most its share, and a slot freed goes to the waiter whose owner holds fewest."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._held: dict[str, int] = {}
        self._in_use = 0
        self._waiting: list[tuple[str, int, asyncio.Future[None]]] = []

    async def acquire(self, owner: str, share: int, wait: float) -> bool:
        """Take a slot for `owner` within `wait` seconds; False when none came."""
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
        # Fewest held first: a newcomer never waits behind a heavy user's queue.
        while self._in_use < self.total:
            eligible = [(self.held(owner), n) for n, (owner, share, _) in enumerate(self._waiting)
                        if self.held(owner) < share]  # fmt: skip
            if not eligible:
                return
            owner, _, ready = self._waiting.pop(min(eligible)[1])
            self._take(owner)
            ready.set_result(None)


class Pace:
    """A minimum transfer rate, checked window by window, so a slow peer cannot hold a
    connection for ever."""

    def __init__(self, rate: float, window: float, now: float) -> None:
        self._quota = rate * window
        self._window = window
        self._end = now + window
        self._moved = 0.0

    def deadline(self) -> float:
        """When the move under way must be done (with no rate, never)."""
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


class Watchdog:
    """The deadline of the read or write under way: `idle` seconds after it started, or the
    pace's (`Pace.deadline`), whichever is first; `on_stall` is called once when it passes."""

    # One timer for a whole transfer, moved only when it fires early or a move's deadline
    # falls before it: deadlines only move later, so it fires about once per `idle` seconds,
    # where a timeout around each piece would make and cancel a timer per piece.

    def __init__(
        self, loop: asyncio.AbstractEventLoop, idle: float, pace: Pace, on_stall: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._idle = idle
        self._pace = pace
        self._on_stall = on_stall
        self._since: float | None = None  # when the move under way started
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires
        self.stalled = False

    def started(self, now: float) -> None:
        """A read or write starts at `now`."""
        self._since = now
        due = self._due(now)
        if due < self._at:
            self._arm(due)

    def finished(self) -> None:
        """The move under way is done."""
        self._since = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._at = None, math.inf

    def _due(self, since: float) -> float:
        return min(since + self._idle, self._pace.deadline())

    def _arm(self, at: float) -> None:
        self.close()
        self._at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, math.inf
        if self._since is None or self.stalled:
            return  # between moves: the next one arms it again
        due = self._due(self._since)
        if self._loop.time() < due:
            self._arm(due)
            return
        self.stalled = True
        self._on_stall()
