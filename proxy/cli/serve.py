"""`regproxy serve`: run the proxy in the foreground, as one worker or the first of several."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..conf import config as config_module
from ..conf.config import Config
from ..core.limits import raise_open_files_limit
from ..core.problems import ConfigError
from .parser import add_serve_flags, command, config_path, overrides

log = logging.getLogger("regproxy")

NAME = "serve"


def add_parser(commands: Any) -> None:
    parser = command(
        commands,
        NAME,
        "run the proxy in the foreground",
        "Serve HTTPS on --listen and forward /v2 to --upstream. Edits to the config, htpasswd,\n"
        "groups, ACL and TLS files apply within a second (a broken edit keeps the last good\n"
        "version and logs why). SIGHUP reloads now, SIGUSR1 reopens the log files,\n"
        "SIGTERM or Ctrl-C lets requests in flight finish, then stops.",
        "  0    stopped by SIGTERM or SIGINT\n"
        "  1    the configuration, a file or the listening address cannot be used",
    )
    add_serve_flags(parser)


def run(args: argparse.Namespace) -> int:
    # aiohttp and ssl: imported by this command only, not by every command's start
    from ..serve.worker import become_worker_0, preflight_logged, run_worker

    path, flags = config_path(args), overrides(args)
    settings = _settings(path, flags)
    if settings is not None and settings.workers > 1:
        # Worker 0 reads the files beside the workers it starts and says what is wrong with
        # them as this would: reading them here first made a start two readings in a row.
        sock = _bound(settings, quietly=True)
        if sock is not None:
            raise_open_files_limit()  # before the workers start: they inherit it
            become_worker_0(sock, path, flags, settings)
    # One worker, or settings or an address that cannot be used: every problem of the files
    # first, as `check` and one worker say them, then the address's.
    try:
        snapshot, problems = preflight_logged(path, flags)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    config = snapshot.config
    for problem in problems:
        log.warning("%s (line ignored)", problem)
    sock = _bound(config)
    if sock is None:
        return 1
    log.info("open files limit: %d", raise_open_files_limit())
    if config.workers == 1:
        return run_worker(snapshot, sock, path, flags)
    become_worker_0(sock, path, flags, config)
    return 1  # not reached: the process is worker 0 now


def _settings(path: Path | None, flags: Mapping[str, object]) -> Config | None:
    """The configuration's own settings, the ACL's rules not read; None when they have
    problems (the whole preflight then names every one)."""
    try:
        return config_module.load(path, flags, read_rules=False)
    except ConfigError:
        return None


def _bound(config: Config, quietly: bool = False) -> socket.socket | None:
    """The listening socket; None when the address cannot be used (said on stderr, unless
    `quietly`)."""
    from ..serve.worker import bind

    try:
        return bind(config)
    except OSError as exc:
        if not quietly:
            print(f"cannot listen on {config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return None
