"""Where log lines go: diagnostics to stderr, access lines to stdout or a file, audit lines to
their file (or, without one, with the diagnostics); SIGUSR1 reopens the files (logrotate)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .accesslog import SINK
from .audit import audit_log

log = logging.getLogger("regproxy")


def configure_logging(
    level: str, access_log_path: Path | None, audit_log_path: Path | None = None
) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    SINK.open(access_log_path)
    audit_log.setLevel(logging.INFO)
    if audit_log_path is not None:
        handler = logging.FileHandler(audit_log_path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        audit_log.addHandler(handler)
        audit_log.propagate = False


def reopen_logs() -> None:
    """Log files are reopened at their configured paths (after logrotate renamed them)."""
    SINK.reopen()
    for handler in audit_log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()  # the next line written opens the path afresh
    log.info("log files reopened")
