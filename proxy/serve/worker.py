"""A worker: one process serving connections on the shared listening socket, in this process
(`run_worker`), or one of several (`main`, told about itself in REGPROXY_WORKER): worker 0,
which `serve` becomes and which starts and supervises the others, or one of those."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..conf.config import Config
from ..conf.snapshot import Snapshot, preflight
from ..core.collector import collect_young_less_often
from ..core.limits import raise_open_files_limit
from ..core.problems import ConfigError, Problem
from ..observe.logsetup import configure_logging
from ..state.peers import Peers, Siblings
from .supervisor import WORKER_ENV, Supervisor, decode, encode

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("regproxy")

PR_SET_PDEATHSIG = 1  # a worker stops when worker 0 dies, whatever the cause
HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
STOP_GRACE = 5.0  # seconds past a stop's bound a worker may take to exit before it is stuck


def bind(config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.listen.host, config.listen.port))
    sock.listen(1024)
    return sock


def run_worker(
    snapshot: Snapshot,
    sock: socket.socket,
    config_path: Path | None,
    overrides: Mapping[str, object],
    siblings: Siblings | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    import uvloop

    server = _server(snapshot, config_path, overrides, siblings, grace=STOP_GRACE)
    uvloop.run(server.serve(sock, ready))
    return 0


def bound_the_stop(grace: float, seconds: float) -> None:
    """A stop takes at most `seconds` more: this process is gone by then and `grace`, or it is
    stuck (a thread that never returns, a close that never ends). Then it writes every
    thread's stack to stderr, which says where, and exits 1. Told again, the new bound holds."""
    # faulthandler's own thread: it runs whatever the interpreter is stuck in, and it is
    # never cancelled, so an exit held up after the loop has stopped (joining a thread)
    # is bounded too.
    faulthandler.dump_traceback_later(seconds + grace, exit=True)


def become_worker_0(
    sock: socket.socket, config_path: Path | None, overrides: Mapping[str, object], config: Config
) -> None:
    """Replace this (checked, bound) process by worker 0 of several; never returns."""
    # A fresh interpreter: without the command line's modules, worker 0 is no larger than
    # the workers it starts (issue 24: every process of the tree counts).
    spec = {
        "listen_fd": sock.fileno(),
        "config": str(config_path) if config_path is not None else None,
        "overrides": dict(overrides),
        "workers": config.workers,
        "log_level": config.log_level,
        "listen": str(config.listen),
        "upstream": config.upstream,
        "metrics": config.metrics_listen is not None,
        "index": 0,
    }
    sock.set_inheritable(True)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)  # kept across exec: see `main`
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[WORKER_ENV] = encode(spec)
    os.execv(sys.executable, [sys.executable, "-m", "proxy.serve.worker"])


def _run_supervising(
    supervisor: Supervisor,
    own: dict[str, object],
    snapshot: Snapshot,
    sock: socket.socket,
    config_path: Path | None,
    overrides: Mapping[str, object],
) -> int:
    """Worker 0 of several, the others started: serve, stop with them; the exit status."""
    import uvloop

    siblings = _siblings(own, dup=True)
    # A grace longer than the others': one of them stuck is the one that says where (and is
    # reaped), not worker 0 waiting for it.
    grace = 2 * STOP_GRACE
    server = _server(snapshot, config_path, overrides, siblings, grace, supervisor.relay)
    return uvloop.run(_serve_beside(server, sock, supervisor))


async def _serve_beside(server: Server, sock: socket.socket, supervisor: Supervisor) -> int:
    """Serve while watching the other workers; once stopped, wait for them to stop too."""
    watch = asyncio.ensure_future(supervisor.watch())
    try:
        await server.serve(sock, supervisor.serving)
    finally:
        if not supervisor.stopping:  # a failed start, not a signal: stop the others
            supervisor.relay(signal.SIGTERM)
        status = await watch
    return status


def _server(
    snapshot: Snapshot,
    config_path: Path | None,
    overrides: Mapping[str, object],
    siblings: Siblings | None,
    grace: float,
    relay: Callable[[int], None] | None = None,
) -> Server:
    from ..http.clienttls import import_aiohttp

    import_aiohttp()  # first, so that its client contexts hold no CA bundle
    from .server import Server

    collect_young_less_often()

    stopping = functools.partial(bound_the_stop, grace)
    return Server(snapshot, config_path, overrides, siblings, relay, stopping)


def _stop_with(parent: int) -> None:
    """A worker whose supervisor is killed outright (SIGKILL, OOM) gets SIGTERM and drains,
    rather than serving on, orphaned, on the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(1)


def main() -> int:
    # Signals wait until the server can handle them (a SIGTERM while starting is a graceful
    # stop once it has started, not a kill); Server.serve unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    spec: dict[str, Any] = decode(os.environ.pop(WORKER_ENV))
    if "parent" in spec:  # not worker 0, which has none to follow
        _stop_with(int(spec["parent"]))
        return _run_started(spec)
    supervisor = Supervisor(spec)
    loaded = None
    try:
        # The others read the files while this one does: a start costs one reading of them,
        # not one per worker, when there are CPUs for them (issue 24: 10,000 rules).
        own = supervisor.start()
        loaded = _preflight(spec)
        if loaded is None:
            return 1
        return _run_supervising(supervisor, own, *loaded, spec["overrides"])
    finally:
        if loaded is None:  # this one cannot serve (whatever stopped it): neither may they
            supervisor.abandon()
            asyncio.run(supervisor.watch())  # before their shared files go
        supervisor.close()


def _run_started(spec: dict[str, Any]) -> int:
    """A worker worker 0 started: serve beside the others until told to stop."""
    loaded = _preflight(spec)
    if loaded is None:
        return 1
    snapshot, sock, config_path = loaded
    ready = functools.partial(_tell_ready, int(spec["ready_fd"]), int(spec["index"]))
    return run_worker(snapshot, sock, config_path, spec["overrides"], _siblings(spec), ready)


def _preflight(spec: dict[str, Any]) -> tuple[Snapshot, socket.socket, Path | None] | None:
    """The snapshot this worker starts with, logging set up, and the listening socket; None
    (said on stderr) when the files cannot be used."""
    config_path = Path(spec["config"]) if spec["config"] is not None else None
    index = int(spec["index"])
    try:
        snapshot, problems = preflight_logged(config_path, spec["overrides"])
    except ConfigError as exc:
        if index == 0:  # the process `serve` started: its answer, as `check` gives it
            print(exc, file=sys.stderr)
        elif spec["again"]:
            # Not at the start: worker 0 is reading the same files then and says what is
            # wrong. Should it find them good (an edit between the readings), this worker is
            # started again, and that start says it.
            print(f"worker {index}: {exc}", file=sys.stderr)
        return None
    if index == 0:
        for problem in problems:
            log.warning("%s (line ignored)", problem)
        log.info("open files limit: %d", raise_open_files_limit())  # raised by `serve`
    return snapshot, socket.socket(fileno=int(spec["listen_fd"])), config_path


def preflight_logged(
    config_path: Path | None, overrides: Mapping[str, object]
) -> tuple[Snapshot, list[Problem]]:
    """`preflight`, then logging set up as the files say: what a process that serves reads
    first. ConfigError when a file, a log file included, cannot be used."""
    snapshot, problems = preflight(config_path, overrides)
    config = snapshot.config
    configure_logging(config.log_level, config.access_log_path, config.audit_log)
    return snapshot, problems


def _siblings(spec: dict[str, Any], dup: bool = False) -> Siblings:
    """A worker's view of the others, from its spec; `dup`: its own copies of the mesh's file
    descriptors (worker 0, whose supervisor keeps and closes the originals)."""
    own = os.dup if dup else int
    peers = Peers(
        socket.socket(fileno=own(int(spec["inbox_fd"]))),
        tuple(socket.socket(fileno=own(int(fd))) for fd in spec["outbox_fds"]),
    )
    for end in (peers.inbox, *peers.outboxes):
        end.setblocking(False)
    return Siblings(
        int(spec["index"]),
        peers,
        Path(spec["lock_dir"]),
        bytes.fromhex(spec["catalog_key"]),
        bytes.fromhex(spec["upload_key"]),
        bytes.fromhex(spec["credentials_key"]),
    )


def _tell_ready(fd: int, index: int) -> None:
    """One line to worker 0: this worker accepts connections."""
    with contextlib.suppress(OSError):
        os.write(fd, b"%d\n" % index)
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
