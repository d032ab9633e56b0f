"""Loopback ports for test servers: every server a test starts gets a free one."""

from __future__ import annotations

import socket


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of `host` (the server takes it over)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for servers that bind it themselves."""
    with free_socket(host) as sock:
        return int(sock.getsockname()[1])
