"""Several workers: a small supervisor process (like nginx's master) that starts them with the
listening socket and the worker mesh, relays signals, and restarts a worker that dies.

`regproxy serve` becomes it (exec, same PID) once the configuration is checked and the socket
bound; it imports only a few standard modules (not even `secrets`, which pulls in OpenSSL).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("regproxy")

RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
SPEC_ENV = "REGPROXY_SUPERVISOR"
WORKER_ENV = "REGPROXY_WORKER"
TICK = 0.1
MAX_BACKOFF = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def become_supervisor(
    sock: socket.socket,
    config_path: Path | None,
    overrides: Mapping[str, object],
    workers: int,
    log_level: str,
    listen: str,
    upstream: str,
    metrics: bool,
) -> None:
    """Replace this (checked, bound) process by the supervisor; never returns."""
    spec = {
        "listen_fd": sock.fileno(),
        "config": str(config_path) if config_path is not None else None,
        "overrides": dict(overrides),
        "workers": workers,
        "log_level": log_level,
        "listen": listen,
        "upstream": upstream,
        "metrics": metrics,
    }
    sock.set_inheritable(True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[SPEC_ENV] = json.dumps(spec)
    os.execv(sys.executable, [sys.executable, "-m", "proxy.serve.supervisor"])


class Supervisor:
    def __init__(self, spec: dict[str, object]) -> None:
        self.spec = spec
        self.mesh: list[tuple[socket.socket, socket.socket]] = []
        self.children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
        self.signals: list[int] = []
        self.stopping = False
        self.started: dict[int, float] = {}  # worker index -> when it was last started
        self.backoff: dict[int, float] = {}
        self.due: dict[int, float] = {}  # worker index -> when to start it again
        self.ready_r, self.ready_w = os.pipe()  # each worker writes its index once it serves
        os.set_blocking(self.ready_r, False)
        self.waiting: set[int] = set()  # workers not ready yet

    def run(self) -> int:
        workers = int(str(self.spec["workers"]))
        runtime = _runtime_dir()
        env, shared = self._environment(runtime)
        self.mesh = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(workers)]
        for signum in RELAYED:
            signal.signal(signum, lambda signum, _frame: self.signals.append(signum))
        for index in range(workers):
            self._start(index, env, shared)
        try:
            status = self._watch(workers, env, shared)
        finally:
            for pair in self.mesh:
                for end in pair:
                    end.close()
            os.close(self.ready_r)
            os.close(self.ready_w)
            _remove(runtime)
        log.info("stopped")
        return status

    def _environment(self, runtime: Path) -> tuple[dict[str, str], dict[str, str]]:
        """The workers' environment, and what every worker is told alike: the keys they share
        (an upload may continue through any worker) and the lock directory."""
        env = dict(os.environ)
        env.pop(SPEC_ENV, None)
        if self.spec["metrics"]:
            # Before prometheus-client is first imported: workers then share their metrics.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(runtime / "metrics")
            (runtime / "metrics").mkdir()
        (runtime / "locks").mkdir()
        shared = {
            "catalog_key": os.urandom(32).hex(),
            "upload_key": os.urandom(32).hex(),
            "credentials_key": os.urandom(32).hex(),
            "lock_dir": str(runtime / "locks"),
        }
        return env, shared

    def _watch(self, workers: int, env: dict[str, str], shared: dict[str, str]) -> int:
        """Until every worker has exited after a stop: say "listening" once all serve, relay
        signals, restart workers that died. The exit status."""
        announced = False
        status = 0
        while self.children or (self.due and not self.stopping):
            self._ready()
            if not announced and not self.waiting and not self.stopping:
                announced = True
                log.info(
                    "regproxy listening on https://%s -> %s with %d workers",
                    self.spec["listen"],
                    self.spec["upstream"],
                    workers,
                )
            self._relay()
            status = self._reap() or status
            for index, when in list(self.due.items()):
                if not self.stopping and time.monotonic() >= when:
                    del self.due[index]
                    self._start(index, env, shared)
            time.sleep(TICK)
        return status

    def _start(self, index: int, env: dict[str, str], shared: dict[str, str]) -> None:
        inbox = self.mesh[index][0]
        outboxes = [out for i, (_, out) in enumerate(self.mesh) if i != index]
        fds = [int(str(self.spec["listen_fd"])), inbox.fileno(), *(o.fileno() for o in outboxes)]
        worker = {
            **self.spec,
            **shared,
            "index": index,
            "inbox_fd": inbox.fileno(),
            "outbox_fds": [o.fileno() for o in outboxes],
            "ready_fd": self.ready_w,
            "parent": os.getpid(),
        }
        fds.append(self.ready_w)
        self.waiting.add(index)
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.serve.worker"],
            env={**env, WORKER_ENV: json.dumps(worker)},
            pass_fds=fds,
            process_group=0,  # a terminal's Ctrl-C reaches the supervisor only
        )
        self.children[process.pid] = (index, process)
        self.started[index] = time.monotonic()

    def _ready(self) -> None:
        """Note the workers that say they accept connections."""
        try:
            lines = os.read(self.ready_r, 4096).split()
        except BlockingIOError:
            return
        for line in lines:
            self.waiting.discard(int(line))

    def _relay(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("shutting down: draining the workers")
                    # No worker will be started again: the socket is theirs alone now, so it
                    # refuses connections once the last of them stops accepting, rather than
                    # queueing them for nobody.
                    os.close(int(str(self.spec["listen_fd"])))
                self.stopping = True
            for _, process in self.children.values():
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def _reap(self) -> int:
        """Collect exited workers and plan a restart of those that died unasked; a failure
        status."""
        # Sooner or later by how long they lived: one that cannot start is no tight loop.
        status = 0
        for pid, (index, process) in list(self.children.items()):
            code = process.poll()
            if code is None:
                continue
            del self.children[pid]
            if self.stopping:
                status = status or code
                continue
            lived = time.monotonic() - self.started[index]
            delay = (
                0.0 if lived > MAX_BACKOFF else min(MAX_BACKOFF, 2 * self.backoff.get(index, 0.5))
            )
            self.backoff[index] = delay
            log.error(
                "worker %d (pid %d) exited with %d: starting another in %.0fs",
                index,
                pid,
                code,
                delay,
            )
            self.due[index] = time.monotonic() + delay
        return status


def _runtime_dir() -> Path:
    """A private directory for the workers' shared files (metrics, locks)."""
    base = Path(os.environ.get("TMPDIR") or "/tmp")
    path = base / f"regproxy-{os.getpid()}-{os.urandom(4).hex()}"
    path.mkdir(mode=0o700)
    return path


def _remove(directory: Path) -> None:
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def main() -> int:
    spec = json.loads(os.environ[SPEC_ENV])
    logging.basicConfig(level=str(spec["log_level"]).upper(), format=LOG_FORMAT, stream=sys.stderr)
    return Supervisor(spec).run()


if __name__ == "__main__":
    sys.exit(main())
