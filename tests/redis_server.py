"""A real `redis-server` (Debian's) for tests: a free loopback port, its own directory, the
append-only file on (a restart keeps what was written), stopped and restarted by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from devtools.net import free_port

START_TIMEOUT = 20.0


def debian_binary(name: str) -> str:
    """A server's path (Debian puts some in /usr/sbin, not always on PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: `make test` installs it (Debian's {name})")
    return found


class RedisServer:
    """`redis-server` on 127.0.0.1:`port` with its data in `directory`; `start()` again after
    `stop()` restarts it on the same port with the same data."""

    def __init__(
        self, directory: Path, password: str | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.password = password
        self.extra = list(extra)  # more redis-server options (`--replicaof HOST PORT`, ...)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            debian_binary("redis-server"),
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        argv += self.extra
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.process.returncode}: {self.log()}")
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server not ready in {START_TIMEOUT}s: {self.log()}")

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by PID (SIGTERM: it finishes writing; SIGKILL: it does not)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
