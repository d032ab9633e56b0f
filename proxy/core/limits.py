"""Fair share: timeouts and caps that keep one client from starving the others.

Settings (`timeouts:` and `limits:` in the config) live here with the one piece of state they
need on the request path, `Gate`: how many requests each user and each client address has in
flight. A request over its share is answered 429 with `Retry-After` at once, before it can
hold an upstream connection; how long a request may wait for one is bounded too (503).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Upstream connections per worker at most; fewer when the open-files limit is low.
UPSTREAM_CONNECTIONS = 512
RESERVED_FILES = 64  # log files, the config files being read, the mesh, the admin listener


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `connect`/`read` bound the upstream, `drain` the graceful shutdown;
    `keepalive` an idle client connection between requests, `header` the time a client has to
    send a request's headers, `handshake` the time to start and finish TLS, `client_idle` the
    time a client may leave its request body unsent or the response unread."""

    connect: float = 5.0
    read: float = 300.0
    drain: float = 30.0
    keepalive: float = 75.0
    header: float = 20.0
    handshake: float = 10.0
    client_idle: float = 60.0


@dataclass(frozen=True)
class Limits:
    """`limits:` in the config. `connections` and `upstream_connections` 0: derived from the
    open-files limit."""

    per_user: int = 128
    per_address: int = 256
    connections: int = 0
    upstream_connections: int = 0
    upstream_wait: float = 10.0


@dataclass(frozen=True)
class Capacity:
    """What one worker may hold open, from its open-files limit."""

    connections: int
    upstream: int


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
