"""The state store: how a process shares what it saw with the other workers and replicas
(events, named locks, login attempts under way, rate-limit counts), and its settings
(`state:`).

The request path talks only to local state and publishes events; publishing never blocks and
never fails a request. `LocalStore` is the default; `proxy.state.redis_store` shares with
replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from . import attempts
from .counts import MeshCounts
from .events import Event, decode
from .peers import Peers

if TYPE_CHECKING:
    from .shared import SharedMap

log = logging.getLogger("regproxy.store")

# Called with an event and its age: seconds since it happened (0 for what arrives as it
# happens; more for history a shared store replays, such as the failed logins of the last
# minutes when a replica starts).
Subscriber = Callable[[Event, float], None]
Release = Callable[[], None]  # lets go of a login attempt counted as under way
T = TypeVar("T")
StateBackend = Literal["local", "redis"]
STATE_BACKENDS: tuple[str, ...] = ("local", "redis")


@dataclass(frozen=True)
class StateSettings:
    """`state:` in the config: where processes share what they saw (restart to change)."""

    backend: StateBackend = "local"
    url: str | None = None  # redis://HOST[:PORT][/DB], or rediss:// (TLS, always verified)
    key_prefix: str = "regproxy:"
    username: str | None = None  # a Redis ACL user
    password: str | None = None
    password_file: Path | None = None  # its first line
    ca_file: Path | None = None  # default: the system's CAs
    cert_file: Path | None = None  # a client certificate
    key_file: Path | None = None
    timeout: float = 0.5  # every command
    connect_timeout: float = 1.0  # every connection attempt
    # Instead of `url`: sentinels asked for the primary of `service`, with credentials of
    # their own; `database` and `sentinel_tls` say what the url's /DB and rediss:// would.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    database: int = 0
    sentinel_tls: bool = False  # for the sentinels and Redis alike
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_password_file: Path | None = None

    @property
    def tls(self) -> bool:
        """Whether Redis (and the sentinels) are spoken to over TLS."""
        return self.sentinel_tls if self.sentinels else (self.url or "").startswith("rediss://")

    @property
    def where(self) -> str:
        """Where Redis is, without credentials, for logs."""
        if self.sentinels:
            listed = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel service {self.service} via {listed}"
        parts = urlsplit(self.url or "")
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class Store(Protocol):
    """Events out to every other process, theirs in to the subscribers."""

    def publish(self, event: Event) -> None:
        """Tell the others (fire and forget; the caller has applied it locally already)."""
        ...

    def tell_workers(self, event: Event) -> None:
        """Tell the other workers of this machine only (what is derived from a credential)."""
        ...

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` with every event another process published."""
        ...

    async def flush(self) -> None:
        """Wait until what this process published has reached the others (at most as long as a
        write may take), where the answer must not overtake the news (a failed login's 401)."""
        ...

    @property
    def healthy(self) -> bool:
        """False while a shared backend cannot be reached (this machine then works alone)."""
        ...

    def sync(self) -> None:
        """Apply every event that has already arrived, now (cheap; never waits)."""
        ...

    def lock(self, name: str, ttl: float, wait: float) -> AbstractAsyncContextManager[None]:
        """Hold `name` exclusively across every process sharing this store (a dead holder's
        lock lasts `ttl` at most); LockTimeout after `wait` seconds."""
        ...

    async def reserve(self, key: str, attempt: bytes, hold: float) -> tuple[int, Release]:
        """Count `attempt` as under way under `key` everywhere (`hold` seconds at most): how
        many are under way now, this one included, and what lets go of it."""
        ...

    def used(self, key: str, expires: int) -> int:
        """A rate limit's count under `key` in the window ending at `expires` (epoch seconds)
        as this process knows it now: its own counts at once, the others' as of the last sync
        (`proxy.state.counts`; never waits)."""
        ...

    def count(self, key: str, expires: int, amount: int) -> None:
        """Add `amount` to that count (negative: give back); shared at the next sync."""
        ...

    def shared_map(self, name: str) -> SharedMap | None:
        """The hash `name` every replica sharing this store reads (`proxy.state.shared`);
        None without a shared backend (each machine has only its files)."""
        ...

    async def start(self) -> None:
        """Begin receiving (on the running loop)."""
        ...

    async def close(self) -> None: ...


def _change_file(path: Path, change: Callable[[str], tuple[str, T]]) -> T:
    """Apply `change` to the text of `path` under an exclusive lock; empty text removes it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _still_linked(path, fd):
                continue  # removed by the worker before: change the file that stands there now
            with os.fdopen(os.dup(fd), "r+", encoding="ascii") as handle:
                text, result = change(handle.read())
                if not text:
                    os.unlink(path)  # while locked: whoever opened it finds it gone
                    return result
                handle.seek(0)
                handle.truncate()
                handle.write(text)
            return result
        finally:
            os.close(fd)


def _still_linked(path: Path, fd: int) -> bool:
    """Whether `fd` is the file at `path` (not one removed since it was opened)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


class LockTimeout(Exception):
    """A named lock stayed held by someone else for longer than the caller would wait."""


class StoreUnavailable(LockTimeout):
    """The shared store cannot be reached: no lock can be promised (the caller refuses)."""


LOCK_POLL = 0.01
# Seconds before sending again to a full inbox, only while one refuses: doubled each time
# nothing goes (a worker that is gone until it is restarted), up to the most.
MESH_RETRY, MESH_RETRY_MOST = 0.005, 0.1


class LocalStore:
    """This process, plus the other workers of this machine when there are several."""

    # Locks: an asyncio lock per name, and with a `lock_dir` (worker 0's) an advisory
    # lock on a file of that name's own (a long hold of one repository's lock never holds up
    # another's), which the kernel releases if the holder dies.

    def __init__(self, peers: Peers | None = None, lock_dir: Path | None = None) -> None:
        self._peers = peers
        self._lock_dir = lock_dir
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # name -> lock, users
        self._under_way: dict[str, str] = {}  # alone (no lock_dir): each key's attempts
        self._counts = MeshCounts(self.tell_workers)
        self._retry: asyncio.TimerHandle | None = None
        self._subscribers.append(self._counts.heard)

    @contextlib.asynccontextmanager
    async def lock(self, name: str, ttl: float, wait: float) -> AsyncIterator[None]:
        entry = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        local, users = entry
        users[0] += 1
        try:
            try:
                await asyncio.wait_for(local.acquire(), wait)
            except TimeoutError:
                raise LockTimeout(name) from None
            try:
                held = None
                if self._lock_dir is not None:
                    held = await asyncio.wait_for(self._file_lock(name), wait)
            except TimeoutError:
                local.release()
                raise LockTimeout(name) from None
            try:
                yield
            finally:
                if held is not None:
                    path, fd = held
                    # Removed while held: a waiter that opened it finds it gone and opens
                    # the next one, so lock files do not pile up, one per name ever locked.
                    os.unlink(path)
                    os.close(fd)  # closing the descriptor releases the file lock
                local.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[name]

    @property
    def healthy(self) -> bool:
        return True

    async def _file_lock(self, name: str) -> tuple[Path, int]:
        """The name's lock file, locked: its path and descriptor."""
        assert self._lock_dir is not None
        path = self._lock_dir / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(LOCK_POLL)
                if _still_linked(path, fd):
                    return path, fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder before removed it: lock the file that stands there now

    async def reserve(self, key: str, attempt: bytes, hold: float) -> tuple[int, Release]:
        """Each key's attempts: a file in `lock_dir` the workers lock in turn (alone: memory)."""
        count = self._change(key, functools.partial(attempts.counted, attempt=attempt, hold=hold))
        self.deliver()  # a worker's failure was sent before it let go: it is in the inbox
        change = functools.partial(attempts.let_go, attempt=attempt)
        return count, functools.partial(self._change, key, change)

    def _change(self, key: str, change: Callable[..., tuple[str, T]]) -> T:
        """`change(text, now=...)` applied to a key's attempts; its result."""
        now = time.time()  # the machine's clock: the same in every worker
        if self._lock_dir is None:
            text, result = change(self._under_way.pop(key, ""), now=now)
            if text:
                self._under_way[key] = text
            return result
        path = self._lock_dir / f"attempts-{hashlib.sha256(key.encode()).hexdigest()[:32]}"
        return _change_file(path, functools.partial(change, now=now))

    def used(self, key: str, expires: int) -> int:
        return self._counts.used(key, expires)

    def count(self, key: str, expires: int, amount: int) -> None:
        self._counts.count(key, expires, amount)

    def publish(self, event: Event) -> None:
        self.tell_workers(event)

    def shared_map(self, name: str) -> SharedMap | None:
        return None

    def tell_workers(self, event: Event) -> None:
        if self._peers is not None:
            self._peers.send(event)
            self._send_again_later(MESH_RETRY)

    def _send_again_later(self, delay: float) -> None:
        """While a full inbox holds something back, try again after `delay` (a worker that
        stalled gets the others' counts soon after it reads again)."""
        if self._peers is None or not self._peers.waiting or self._loop is None:
            return
        if self._retry is None:
            self._retry = self._loop.call_later(delay, self._send_again, delay)

    def _send_again(self, delay: float) -> None:
        self._retry = None
        assert self._peers is not None
        went = self._peers.flush()
        self._send_again_later(MESH_RETRY if went else min(2 * delay, MESH_RETRY_MOST))

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def flush(self) -> None:
        """The mesh's datagrams are in the others' inboxes once sent."""

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
                subscriber(event, 0.0)
            delivered += 1
        return delivered

    async def start(self) -> None:
        if self._peers is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._peers.inbox.fileno(), self.deliver)
            self._send_again_later(MESH_RETRY)  # what a full inbox refused before the start

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._loop is not None and self._peers is not None:
            self._loop.remove_reader(self._peers.inbox.fileno())
            self._loop = None
