"""A worker: one process serving connections on the shared listening socket, in this process
(`run_worker`) or started by the supervisor (`main`, told about itself in REGPROXY_WORKER)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..conf.config import Config
from ..conf.snapshot import Snapshot, preflight
from ..core.problems import ConfigError
from ..observe.logsetup import configure_logging
from ..state.peers import Peers, Siblings
from .supervisor import WORKER_ENV, decode

PR_SET_PDEATHSIG = 1  # a worker stops when its supervisor dies, whatever the cause
HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


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

    from ..http.clienttls import import_aiohttp

    import_aiohttp()  # first, so that its client contexts hold no CA bundle
    from .server import Server

    server = Server(snapshot, config_path, overrides, siblings)
    uvloop.run(server.serve(sock, ready))
    return 0


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
    _stop_with(int(spec["parent"]))
    config_path = Path(spec["config"]) if spec["config"] is not None else None
    try:
        snapshot, _ = preflight(config_path, spec["overrides"])
    except ConfigError as exc:
        print(f"worker {spec['index']}: {exc}", file=sys.stderr)
        return 1
    config = snapshot.config
    configure_logging(config.log_level, config.access_log_path, config.audit_log)
    sock = socket.socket(fileno=int(spec["listen_fd"]))
    peers = Peers(
        socket.socket(fileno=int(spec["inbox_fd"])),
        tuple(socket.socket(fileno=int(fd)) for fd in spec["outbox_fds"]),
    )
    for end in (peers.inbox, *peers.outboxes):
        end.setblocking(False)
    siblings = Siblings(
        int(spec["index"]),
        peers,
        Path(spec["lock_dir"]),
        bytes.fromhex(spec["catalog_key"]),
        bytes.fromhex(spec["upload_key"]),
        bytes.fromhex(spec["credentials_key"]),
    )
    ready = functools.partial(_tell_ready, int(spec["ready_fd"]), int(spec["index"]))
    return run_worker(snapshot, sock, config_path, spec["overrides"], siblings, ready)


def _tell_ready(fd: int, index: int) -> None:
    """One line to the supervisor: this worker accepts connections."""
    with contextlib.suppress(OSError):
        os.write(fd, b"%d\n" % index)
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
