"""Access log: one line per request in Apache's common or combined format, or JSON lines.

The common and combined lines end with the duration in microseconds (Apache's `%D`).
Lines go straight to a file descriptor with one write(2) each, like Apache's own log: the
logging module's record, lock and formatter machinery cost about a sixth of a 401's CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

USER_KEY = web.RequestKey("regproxy.user", str)
BYTES_KEY = web.RequestKey("regproxy.bytes", int)  # body bytes, set by the forwarder


class Sink:
    """Where access lines go: nowhere until opened, then a file (reopened on SIGUSR1 for
    logrotate) or standard output. O_APPEND keeps the workers' lines whole."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._fd: int | None = None

    def open(self, path: Path | None) -> None:
        self._path = path
        self.reopen()

    def reopen(self) -> None:
        """Write to the configured path afresh (after a rename); stdout needs no reopening."""
        if self._path is None:
            try:
                self._fd = sys.stdout.fileno()
            except (AttributeError, ValueError, OSError):  # detached: no stdout at all
                self._fd = None
            return
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self._fd = self._fd, fd
        if old is not None and old > 2:
            os.close(old)

    def write(self, line: str) -> None:
        if self._fd is not None:
            os.write(self._fd, (line + "\n").encode("utf-8", "backslashreplace"))


SINK = Sink()


class _Clock:
    """The timestamps of the current second, formatted once per second, not per request."""

    def __init__(self) -> None:
        self._second = -1
        self.common = self.iso = ""

    def tick(self) -> _Clock:
        now = int(time.time())
        if now != self._second:
            local = time.localtime(now)
            self._second = now
            self.common = time.strftime("%d/%b/%Y:%H:%M:%S %z", local)
            self.iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", local)
        return self


class AccessLogger(AbstractAccessLogger):
    format = "common"
    clock = _Clock()

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        if self.format == "off":
            return
        user = request.get(USER_KEY) or "-"
        remote = request.remote or "-"
        sent = request.get(BYTES_KEY, response.content_length)
        if self.format == "json":
            SINK.write(
                json.dumps(
                    {
                        "time": self.clock.tick().iso,
                        "client": remote,
                        "user": user,
                        "method": request.method,
                        "path": request.raw_path,
                        "status": response.status,
                        "bytes": sent or 0,
                        "duration_ms": round(time_ * 1000, 3),
                        "user_agent": request.headers.get("User-Agent", ""),
                    }
                )
            )
            return
        version = request.version
        line = f"{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}"
        line = line.replace('"', '\\"')
        stamp = self.clock.tick().common
        text = f'{remote} - {user} [{stamp}] "{line}" {response.status} {sent or "-"}'
        if self.format == "combined":
            referer = request.headers.get("Referer", "-")
            agent = request.headers.get("User-Agent", "-")
            text += f' "{referer}" "{agent}"'
        SINK.write(f"{text} {int(time_ * 1_000_000)}")


def access_logger_class(fmt: str) -> type[AccessLogger]:
    """An AccessLogger subclass bound to one format (aiohttp instantiates it itself)."""
    return type("BoundAccessLogger", (AccessLogger,), {"format": fmt})
