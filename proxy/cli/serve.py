"""`regproxy serve`: run the proxy in the foreground, as one worker or the first of several."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..conf.snapshot import preflight
from ..core.limits import raise_open_files_limit
from ..core.problems import ConfigError
from ..observe.logsetup import configure_logging
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
    from ..serve.worker import become_worker_0, bind, run_worker

    try:
        snapshot, problems = preflight(config_path(args), overrides(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    config = snapshot.config
    configure_logging(config.log_level, config.access_log_path, config.audit_log)
    for problem in problems:
        log.warning("%s (line ignored)", problem)
    try:
        sock = bind(config)
    except OSError as exc:
        print(f"cannot listen on {config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("open files limit: %d", raise_open_files_limit())
    if config.workers == 1:
        return run_worker(snapshot, sock, config_path(args), overrides(args))
    become_worker_0(sock, config_path(args), overrides(args), config)
    return 1  # not reached: the process is worker 0 now
