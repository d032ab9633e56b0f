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
from devtools.tls import TlsFiles

START_TIMEOUT = 20.0


def debian_binary(name: str) -> str:
    """A server's path (Debian puts some in /usr/sbin, not always on PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: `make test` installs it (Debian's {name})")
    return found


def listen_options(port: int, tls: TlsFiles | None) -> list[tuple[str, str]]:
    """Where a redis-server or redis-sentinel listens, as (option, value): `port`, or with
    `tls` its TLS port only."""
    if tls is None:
        return [("port", str(port))]
    return [
        ("port", "0"), ("tls-port", str(port)), ("tls-cert-file", str(tls.server_cert)),
        ("tls-key-file", str(tls.server_key)), ("tls-ca-cert-file", str(tls.ca_cert)),
        ("tls-replication", "yes"), ("tls-auth-clients", "no"),
    ]  # fmt: skip


def client_tls(tls: TlsFiles | None) -> dict[str, object]:
    """redis-py's options to reach a server started with `tls`."""
    return {} if tls is None else {"ssl": True, "ssl_ca_certs": str(tls.ca_cert)}


class RedisServer:
    """`redis-server` on 127.0.0.1:`port` with its data in `directory` (TLS only, with `tls`:
    to clients and between replicas, clients not asked for a certificate); `start()` again
    after `stop()` restarts it on the same port with the same data."""

    def __init__(
        self,
        directory: Path,
        password: str | None = None,
        extra: Sequence[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.directory = directory
        self.password = password
        self.extra = list(extra)  # more redis-server options (`--replicaof HOST PORT`, ...)
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            debian_binary("redis-server"),
            "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
            *(part for name, value in listen_options(self.port, self.tls)
              for part in (f"--{name}", value)),
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
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5,
            **client_tls(self.tls),
        )  # fmt: skip

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
