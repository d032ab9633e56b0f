"""A Redis Sentinel deployment for tests, from Debian's `redis-server` and `redis-sentinel`:
one primary, one replica and three sentinels (quorum 2), all on free loopback ports with their
own directories, Redis and the sentinels each requiring a password of their own, everything
spoken over TLS if asked. Started and stopped by PID; the primary can be killed to make the
sentinels fail over."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from devtools.net import free_port
from devtools.tls import TlsFiles
from tests.redis_server import RedisServer, client_tls, debian_binary, listen_options

SERVICE = "regproxy"
DOWN_AFTER_MS = 1000  # a primary silent this long is down for a sentinel
START_TIMEOUT = 30.0  # sentinels find the replica and each other within seconds
FAILOVER_TIMEOUT = 30.0


def until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not reached in {timeout}s: {what}")
        time.sleep(0.05)


class SentinelProcess:
    """`redis-sentinel` on a free loopback port, monitoring `primary` as SERVICE."""

    def __init__(self, directory: Path, primary: RedisServer, password: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.password = password
        self.tls = primary.tls
        self.port = free_port()
        config = directory / "sentinel.conf"  # the sentinel rewrites it as it learns
        listen = listen_options(self.port, self.tls)
        config.write_text(
            "".join(f"{name} {value}\n" for name, value in listen)
            + f"bind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"requirepass {password}\nsentinel sentinel-pass {password}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
            f"sentinel auth-pass {SERVICE} {primary.password}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.process = subprocess.Popen(
            [debian_binary("redis-sentinel"), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2,
            **client_tls(self.tls),
        )  # fmt: skip

    def primary(self) -> tuple[str, int] | None:
        """The primary this sentinel names now."""
        named = self.client().sentinel_get_master_addr_by_name(SERVICE)
        return (named[0].decode() if isinstance(named[0], bytes) else named[0], int(named[1]))

    def knows(self) -> tuple[int, int]:
        """(replicas, other sentinels) it knows of."""
        state = self.client().sentinel_master(SERVICE)
        return int(state["num-slaves"]), int(state["num-other-sentinels"])

    def log(self) -> str:
        path = self.directory / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Failover:
    """What the sentinels did after the primary was killed: when (monotonic) each first named
    the new primary, and which it is."""

    killed_at: float
    named_at: dict[int, float]  # sentinel port -> when
    new_primary: RedisServer

    @property
    def switched_at(self) -> float:
        """When the first sentinel named the new primary."""
        return min(self.named_at.values())


class SentinelDeployment:
    """One primary, one replica, three sentinels."""

    def __init__(
        self, directory: Path, password: str, sentinel_password: str, tls: TlsFiles | None = None
    ) -> None:
        self.directory = directory
        self.primary = RedisServer(directory / "primary", password, tls=tls)
        replica_of = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica = RedisServer(directory / "replica", password, replica_of, tls)
        self.sentinel_password = sentinel_password
        self.sentinels: list[SentinelProcess] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels]

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        # Replicating before the sentinels start: each finds the replica in its first INFO.
        until(lambda: self._linked(self.replica), "the replica in sync", START_TIMEOUT)
        for n in range(3):
            sentinel = SentinelProcess(
                self.directory / f"sentinel{n}", self.primary, self.sentinel_password
            )
            self.sentinels.append(sentinel)
        for sentinel in self.sentinels:
            until(lambda s=sentinel: s.knows() == (1, 2), "a sentinel ready", START_TIMEOUT)  # type: ignore[misc]

    @staticmethod
    def _linked(server: RedisServer) -> bool:
        return server.client().info("replication").get("master_link_status") == "up"

    def kill_primary(self) -> Failover:
        """SIGKILL the primary (nothing flushed, no goodbye), then wait until every sentinel
        names the replica instead; when each did."""
        old = self.primary
        killed_at = time.monotonic()
        old.stop(signal.SIGKILL)
        named_at: dict[int, float] = {}

        def switched() -> bool:
            for sentinel in self.sentinels:
                if sentinel.port not in named_at and sentinel.primary() == (
                    "127.0.0.1",
                    self.replica.port,
                ):
                    named_at[sentinel.port] = time.monotonic()
            return len(named_at) == len(self.sentinels)

        until(switched, "every sentinel naming the new primary", FAILOVER_TIMEOUT)
        self.primary, self.replica = self.replica, old
        return Failover(killed_at, named_at, self.primary)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()

    def logs(self) -> str:
        return "\n".join(s.log()[-3000:] for s in self.sentinels)

    def __enter__(self) -> SentinelDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
