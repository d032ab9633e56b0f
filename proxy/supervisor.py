"""Running `serve`: bind the socket, then one worker in this process, or a supervisor that forks
several (like uvicorn's multiprocess supervisor) and watches over them.

With several workers the parent process:
- binds the socket once and makes the worker mesh (`proxy.peers`) before forking;
- relays SIGTERM/SIGINT/SIGHUP/SIGUSR1 to every worker (each in its own process group, so a
  terminal's Ctrl-C reaches the parent only and is relayed once);
- watches the files itself: it loads an edit once, reports it once (workers stay quiet), and
  tells the workers to reload (SIGHUP) only if it is usable;
- restarts a worker that died while it was not asked to stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import new_key
from .config import Config
from .limits import raise_open_files_limit
from .peers import Mesh, Peers
from .reload import POLL_INTERVAL, Watcher, load_next, report
from .snapshot import Snapshot

log = logging.getLogger("regproxy")

RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def bind(config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.listen.host, config.listen.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve(
    snapshot: Snapshot,
    sock: socket.socket,
    config_path: Path | None,
    overrides: Mapping[str, object],
) -> int:
    """Serve until stopped; the exit status."""
    limit = raise_open_files_limit()
    log.info("open files limit: %d", limit)
    config = snapshot.config
    if config.workers == 1:
        return run_worker(snapshot, sock, config_path, overrides)
    if config.metrics_listen is not None:
        # Before prometheus-client is first imported: workers then share their metrics.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="regproxy-metrics-")
    try:
        return Supervisor(snapshot, sock, config_path, overrides).run()
    finally:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)


def run_worker(
    snapshot: Snapshot,
    sock: socket.socket,
    config_path: Path | None,
    overrides: Mapping[str, object],
    peers: Peers | None = None,
    catalog_key: bytes | None = None,
    lock_dir: Path | None = None,
    quiet: bool = False,
) -> int:
    import uvloop

    from .server import Server

    server = Server(snapshot, config_path, overrides, peers, catalog_key, lock_dir, quiet)
    uvloop.run(server.serve(sock))
    return 0


@dataclass
class Supervisor:
    """The parent of several workers."""

    snapshot: Snapshot
    sock: socket.socket
    config_path: Path | None
    overrides: Mapping[str, object]
    children: dict[int, int] = field(default_factory=dict)  # pid -> worker index
    signals: list[int] = field(default_factory=list)
    stopping: bool = False
    lock_dir: Path | None = None  # the workers' shared lock files (proxy.store)

    def run(self) -> int:
        workers = self.snapshot.config.workers
        mesh = Mesh(workers)  # kept open here: a restarted worker gets the same sockets
        catalog_key = new_key()
        self.lock_dir = Path(tempfile.mkdtemp(prefix="regproxy-locks-"))
        for index in range(workers):
            self._fork(index, mesh, catalog_key)
        for signum in RELAYED:
            signal.signal(signum, lambda signum, _frame: self.signals.append(signum))
        log.info(
            "regproxy listening on https://%s -> %s with %d workers",
            self.snapshot.config.listen,
            self.snapshot.config.upstream,
            workers,
        )
        watcher = Watcher(self.snapshot.config.watched_files())
        status = 0
        try:
            while self.children:
                self._relay(watcher)
                status = self._reap(mesh, catalog_key) or status
                changed = [] if self.stopping else watcher.stable_changes()
                if changed:
                    self._reload(", ".join(f"{p} changed" for p in changed), watcher)
                time.sleep(POLL_INTERVAL)
        finally:
            mesh.close()
            shutil.rmtree(self.lock_dir, ignore_errors=True)
        log.info("stopped")
        return status

    def _fork(self, index: int, mesh: Mesh, catalog_key: bytes) -> None:
        pid = os.fork()
        if pid == 0:
            # Own process group: a terminal's Ctrl-C (or a control-group kill) reaches the
            # parent only, which relays it once; twice would skip the drain.
            os.setpgid(0, 0)
            for signum in RELAYED:
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(
                    self.snapshot,
                    self.sock,
                    self.config_path,
                    self.overrides,
                    mesh.peers(index),
                    catalog_key,
                    self.lock_dir,
                    quiet=True,
                )
            finally:
                os._exit(code)  # never return into the parent's code
        self.children[pid] = index

    def _relay(self, watcher: Watcher) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload("SIGHUP", watcher)
                continue
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("shutting down: draining the workers")
                self.stopping = True
            self._tell(signum)

    def _tell(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self, mesh: Mesh, catalog_key: bytes) -> int:
        """Collect exited workers; restart those that died unasked. A failure status."""
        status = 0
        for pid in list(self.children):
            try:
                done, code = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                done, code = pid, 0
            if done == 0:
                continue
            index = self.children.pop(pid)
            exit_code = os.waitstatus_to_exitcode(code) if code else 0
            if self.stopping:
                status = status or exit_code
                continue
            log.error("worker %d (pid %d) exited with %d: starting another", index, pid, exit_code)
            self._fork(index, mesh, catalog_key)
        return status

    def _reload(self, reason: str, watcher: Watcher) -> None:
        """Load the files once here; if they are usable, the workers reload them (SIGHUP)."""
        loaded = load_next(self.snapshot, self.config_path, self.overrides)
        report(loaded, reason)
        if loaded.snapshot is None:
            return
        self.snapshot = loaded.snapshot
        watcher.watch(self.snapshot.config.watched_files())
        self._tell(signal.SIGHUP)
