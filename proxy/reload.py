"""Live edits: watched files -> a new immutable Snapshot, swapped in one assignment.

Files are polled (stat every quarter second), which sees in-place edits and write-then-rename
alike, on any filesystem. A change is loaded once the file has stopped changing for one poll,
so a half-written file is not read. A load that fails keeps the last good version and logs
why, with file and line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import config as config_module
from .authn.htpasswd import UserFiles
from .config import Config, ConfigError, read_text
from .credentials import Htpasswd, Problem, parse_groups, parse_htpasswd
from .policy import Rule
from .tls import load_certificate, server_context
from .token import Signer, load_signer

log = logging.getLogger("regproxy.reload")

POLL_INTERVAL = 0.25
# Config attributes the running process cannot change (sockets, processes, log handlers).
RESTART_ONLY = (
    "listen",
    "workers",
    "log_level",
    "access_log",
    "access_log_path",
    "audit_log",
    "metrics_listen",
)


@dataclass(frozen=True)
class Snapshot:
    """Everything a request reads, consistent with itself; replaced whole, never mutated."""

    config: Config
    users: UserFiles
    rules: tuple[Rule, ...]
    signer: Signer | None = None  # token server mode


def _read_htpasswd(config: Config) -> Htpasswd:
    htpasswd = parse_htpasswd(read_text(config.htpasswd), str(config.htpasswd))
    if not htpasswd.users:
        # Empty or all lines bad: most likely a truncated or half-written file.
        raise ConfigError([Problem(str(config.htpasswd), 0, "no usable users in this file")])
    return htpasswd


def load_users(
    config: Config, previous: UserFiles | None = None
) -> tuple[UserFiles, list[Problem]]:
    """Parse htpasswd (when that backend is used) and groups. Raises ConfigError if a file
    cannot be used at all; returns line-level problems (those lines are ignored)."""
    fatal: list[Problem] = []
    htpasswd = Htpasswd({})
    groups: dict[str, frozenset[str]] = {}
    problems: list[Problem] = []
    if "htpasswd" in config.auth_backends:
        try:
            htpasswd = _read_htpasswd(config)
            problems.extend(htpasswd.problems)
        except ConfigError as exc:
            fatal.extend(exc.problems)
    if config.groups is not None:
        try:
            groups, group_problems = parse_groups(read_text(config.groups), str(config.groups))
            problems.extend(group_problems)
        except ConfigError as exc:
            fatal.extend(exc.problems)
    if fatal:
        raise ConfigError(fatal, problems)
    return UserFiles.build(htpasswd, groups, previous.dummy if previous else None), problems


def load_snapshot(
    config_path: Path | None,
    overrides: Mapping[str, object],
    previous: UserFiles | None = None,
    *,
    startup: bool = False,
) -> tuple[Snapshot, list[Problem]]:
    """Build a Snapshot from scratch; ConfigError listing every problem that makes it
    unusable (the config's; else the user files', the token key's and, at `startup`, the
    certificate pair's and the log files', all of them), else the line-level problems."""
    config = config_module.load(config_path, overrides)
    fatal: list[Problem] = []
    try:
        users, problems = load_users(config, previous)
    except ConfigError as exc:
        users, problems = None, exc.ignored
        fatal += exc.problems
    signer, token_problems = load_signer(config.token) if config.token else (None, [])
    fatal += token_problems
    if startup:
        fatal += load_certificate(server_context(), config.tls_cert, config.tls_key)
        fatal += _log_file_problems(config)
    if fatal or users is None:
        raise ConfigError(fatal, problems)
    return Snapshot(config, users, config.rules, signer), problems


def preflight(
    config_path: Path | None, overrides: Mapping[str, object]
) -> tuple[Snapshot, list[Problem]]:
    """What `serve` needs before it starts and what `check` reports, so both name the same
    problems: load_snapshot with the TLS pair tried on a scratch context and the log files
    checked for appending."""
    return load_snapshot(config_path, overrides, startup=True)


def _log_file_problems(config: Config) -> list[Problem]:
    """Log files regproxy could not append to (checked without creating them)."""
    problems = []
    for key, path in (("access_log.path", config.access_log_path), ("audit_log", config.audit_log)):
        if path is None:
            continue
        writable = path if path.exists() else path.parent
        if path.is_dir():
            why = "it is a directory"
        elif not writable.is_dir() and writable != path:
            why = f"directory {writable} does not exist"
        elif not os.access(writable, os.W_OK):
            why = f"uid {os.geteuid()} may not write to {writable}"
        else:
            continue
        problems.append(Problem(str(path), 0, f"{key}: cannot append: {why}"))
    return problems


_Signature = tuple[int, int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class State:
    """Holds the current Snapshot and reloads it when its files change."""

    def __init__(
        self,
        snapshot: Snapshot,
        config_path: Path | None,
        overrides: Mapping[str, object],
        ssl_context: ssl.SSLContext | None = None,
        on_reload: Callable[[bool], None] | None = None,
    ) -> None:
        self.current = snapshot
        self._config_path = config_path
        self._overrides = dict(overrides)
        self._ssl_context = ssl_context
        self.on_reload = on_reload  # told whether each reload succeeded (metrics)
        self._seen = self._signatures()
        self._pending: dict[Path, _Signature] = {}

    def _signatures(self) -> dict[Path, _Signature]:
        return {path: _signature(path) for path in self.current.config.watched_files()}

    def reload(self, reason: str = "reload requested") -> bool:
        """Load everything again; on failure keep the current snapshot. True if swapped."""
        try:
            snapshot, problems = load_snapshot(
                self._config_path, self._overrides, self.current.users
            )
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed, keeping the last good configuration: %s", problem)
            self._report(ok=False)
            return False
        for problem in problems:
            log.warning("%s (line ignored)", problem)
        tls_ok = self._reload_tls(snapshot.config)
        self._apply(snapshot)
        log.info("configuration reloaded (%s)", reason)
        self._report(ok=tls_ok)
        return True

    def _reload_tls(self, config: Config) -> bool:
        """Load the pair into the live context only once a scratch context took it: a failed
        load_cert_chain would leave the live context without any certificate."""
        if self._ssl_context is None:
            return True
        problems = load_certificate(server_context(), config.tls_cert, config.tls_key)
        if not problems:
            problems = load_certificate(self._ssl_context, config.tls_cert, config.tls_key)
        for problem in problems:
            log.error("TLS reload failed, keeping the current certificate: %s", problem)
        return not problems

    def _report(self, ok: bool) -> None:
        if self.on_reload is not None:
            self.on_reload(ok)

    def _apply(self, snapshot: Snapshot) -> None:
        """Swap in the new snapshot; settings read only at startup keep their running value."""
        old, new = self.current.config, snapshot.config
        kept = {name: getattr(old, name) for name in RESTART_ONLY}
        changed = [name for name in RESTART_ONLY if getattr(new, name) != kept[name]]
        if new.timeouts.keepalive != old.timeouts.keepalive:
            changed.append("timeouts.keepalive")
        for name in changed:
            log.warning("%s changed in the config: takes effect at the next restart", name)
        timeouts = replace(new.timeouts, keepalive=old.timeouts.keepalive)
        self.current = replace(snapshot, config=replace(new, **kept, timeouts=timeouts))

    def poll(self) -> None:
        """One poll: load changes that have been stable since the previous poll."""
        now = self._signatures()
        changed = [p for p, sig in now.items() if sig != self._seen.get(p)]
        stable = [p for p in changed if self._pending.get(p, ...) == now[p]]
        self._pending = {p: now[p] for p in changed}
        if not changed or len(stable) != len(changed):
            return
        self.reload(", ".join(f"{p} changed" for p in stable))
        # Signatures from before the load win: an edit made during it is seen next poll.
        self._seen = {**self._signatures(), **now}
        self._pending = {}

    async def watch(self) -> None:
        """Poll forever; cancelled at shutdown."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.poll()
