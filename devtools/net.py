"""Loopback ports: every server started here gets a free one and is waited for."""

from __future__ import annotations

import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"


def free_socket(host: str = LOOPBACK) -> socket.socket:
    """A listening socket on a free port of `host` (the server takes it over)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free now, for servers that bind it themselves."""
    with free_socket(host) as sock:
        return int(sock.getsockname()[1])


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
