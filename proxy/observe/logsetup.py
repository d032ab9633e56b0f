"""Where log lines go: diagnostics to stderr, access lines to stdout or a file, audit lines to
their file; SIGUSR1 reopens the files. No HTTP stack: `serve` configures it before importing one."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..core.problems import ConfigError, Problem
from .audit import audit_log

log = logging.getLogger("regproxy")


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

    def close(self) -> None:
        """Write nowhere, until opened again."""
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._path = self._fd = None

    def write(self, line: str) -> None:
        if self._fd is not None:
            os.write(self._fd, (line + "\n").encode("utf-8", "backslashreplace"))


SINK = Sink()


def configure_logging(
    level: str, access_log_path: Path | None, audit_log_path: Path | None = None
) -> None:
    """Diagnostics at `level` on stderr, the log files opened; ConfigError naming one that
    cannot be (the preflight's check passed, but the file refuses: in /proc, a full disk)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with _opening("access_log.path", access_log_path):
        SINK.open(access_log_path)
    audit_log.setLevel(logging.INFO)
    if audit_log_path is not None:
        with _opening("audit_log", audit_log_path):
            handler = logging.FileHandler(audit_log_path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        audit_log.addHandler(handler)
        audit_log.propagate = False


@contextlib.contextmanager
def _opening(key: str, path: Path | None) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        problem = Problem(str(path), 0, f"{key}: cannot append: {exc.strerror or exc}")
        raise ConfigError([problem]) from None


def reopen_logs() -> None:
    """Log files are reopened at their configured paths (after logrotate renamed them)."""
    SINK.reopen()
    for handler in audit_log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()  # the next line written opens the path afresh
    log.info("log files reopened")
