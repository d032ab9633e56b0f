"""Loopback ports: every server started here gets a free one and is waited for."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_socket(host: str = LOOPBACK) -> socket.socket:
    """A listening socket on a free port of `host` (the server takes it over)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free now, for servers that bind it themselves."""
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            port = next(_PORTS)
            try:
                sock.bind((host, port))
            except OSError:  # a server's, or a connection's lingering on in TIME_WAIT
                continue
            return port


def _ports() -> Iterator[int]:
    # Not bind(0): the kernel hands out the ephemeral range to bind(0) and to every outgoing
    # connection, and one of those (of another xdist worker, say) could take the port between
    # free_port() and the server's bind(). Below that range only servers bind, and each xdist
    # worker cycles through a slice of its own, from a random start (runs side by side).
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low, high = 16_384, int(ephemeral[0])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (high - low) // workers
    if size < 1000:  # an ephemeral range that starts low: the kernel's choice after all
        return (_bound_port() for _ in itertools.count())
    first = low + index * size
    start = random.randrange(size)
    return itertools.cycle([*range(first + start, first + size), *range(first, first + start)])


def _bound_port() -> int:
    with free_socket() as sock:
        return int(sock.getsockname()[1])


_PORTS = _ports()


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout: float, host: str = LOOPBACK
) -> None:
    """Until `host:port` accepts a connection; RuntimeError when `process` exits first or
    nothing listens within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g}s")
