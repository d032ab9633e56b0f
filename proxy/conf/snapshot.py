"""A snapshot: everything a request reads, built from the files at once and never mutated.

`load_snapshot` reads and parses every file (config, ACL, htpasswd, groups, robots, grants,
the server's secret, token key, TLS pair). It does blocking I/O and slow work (parsing a large
htpasswd file, a dummy bcrypt hash, loading certificates), so a running server calls it in a
worker thread (`proxy.conf.reload`); the CLI calls it directly.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..authn.chain import Authenticators
from ..authn.credentials import Htpasswd, parse_groups, parse_htpasswd
from ..authn.htpasswd import UserFiles
from ..authn.robotfile import Robot, derive, load_robots, read_secret_file
from ..core.problems import ConfigError, Problem, read_text
from ..http.tls import load_certificate, server_context
from ..policy.grantfile import load_grants
from ..policy.grants import NO_GRANTS, Grants
from ..policy.rules import Rule, RuleSet
from ..tokenserver.scopes import Signer, load_signer
from . import config as config_module
from .config import Config

Signature = tuple[int, int, int, int] | None


def signature(path: Path) -> Signature:
    """What tells an edited file apart: device, inode, size, modification time (None: absent)."""
    try:
        st = os.stat(path)  # follows symlinks: a swapped `..data` link changes the inode
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Snapshot:
    """Everything a request reads, consistent with itself; replaced whole, never mutated.
    `authn` is attached by the running server (None for the CLI's checks)."""

    config: Config
    users: UserFiles
    rules: tuple[Rule, ...]
    signer: Signer | None = None  # token server mode
    tls: ssl.SSLContext | None = None
    authn: Authenticators | None = None
    # Each watched file as it was just before it was read: an edit made while the files
    # were being loaded is seen as an edit afterwards, never lost.
    signatures: Mapping[Path, Signature] = field(default_factory=dict, compare=False)
    robots: Mapping[str, Robot] = field(default_factory=lambda: MappingProxyType({}))
    secret: bytes | None = field(default=None, repr=False)  # the config's secret_file
    grants: Grants = NO_GRANTS  # break-glass grants (in force or not: checked per request)

    def key(self, purpose: str) -> bytes | None:
        """A key derived from the server's secret for one purpose, if there is a secret."""
        return derive(self.secret, purpose) if self.secret is not None else None


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
    cannot be used at all (with the bad lines of the others); returns line-level problems
    (those lines are ignored)."""
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
        raise ConfigError(fatal + problems)
    return UserFiles.build(htpasswd, groups, previous.dummy if previous else None), problems


def load_tls(config: Config) -> ssl.SSLContext:
    """A new server context with the configured pair; ConfigError naming what is wrong."""
    context = server_context()
    problems = load_certificate(context, config.tls_cert, config.tls_key)
    if problems:
        raise ConfigError(problems)
    return context


def load_snapshot(
    config_path: Path | None,
    overrides: Mapping[str, object],
    previous: Snapshot | None = None,
    tls: bool = True,
    startup: bool = False,
) -> tuple[Snapshot, list[Problem]]:
    """Build a Snapshot from scratch: the snapshot and its line-level problems (those lines are
    ignored), or ConfigError with every problem found in every file when it is unusable.
    `tls` False skips the certificate (the CLI's `explain`, a reload that handles it apart);
    `startup` also checks the log files can be appended to (they are opened only at start)."""
    first = {config_path: signature(config_path)} if config_path is not None else {}
    config = config_module.load(config_path, overrides)
    signatures = {path: signature(path) for path in config.watched_files()} | first
    fatal: list[Problem] = []
    problems: list[Problem] = []
    try:
        users, problems = load_users(config, previous.users if previous else None)
    except ConfigError as exc:
        fatal += exc.problems
    signer, token_problems = load_signer(config.token) if config.token else (None, [])
    fatal += token_problems
    secret: bytes | None = None
    robots: dict[str, Robot] = {}
    try:
        secret = read_secret_file(config.secret_file) if config.secret_file else None
        if config.robots is not None:
            robots, robot_problems = load_robots(config.robots)
            problems = problems + robot_problems
    except ConfigError as exc:
        fatal += exc.problems
    grants = NO_GRANTS
    try:
        grants, grant_problems = load_grants(config.grants)
        problems = problems + grant_problems
    except ConfigError as exc:
        fatal += exc.problems
    context = None
    try:
        context = load_tls(config) if tls else None
    except ConfigError as exc:
        fatal += exc.problems
    if config.state.password_file is not None:
        try:
            read_text(config.state.password_file)
        except ConfigError as exc:
            fatal += exc.problems
    if startup:
        fatal += _log_file_problems(config)
    if fatal:
        raise ConfigError(fatal + problems)
    rules = RuleSet(config.rules)  # indexed here, off the event loop
    snapshot = Snapshot(
        config,
        users,
        rules,
        signer,
        context,
        None,
        signatures,
        MappingProxyType(robots),
        secret,
        grants,
    )
    return snapshot, problems


def preflight(
    config_path: Path | None, overrides: Mapping[str, object]
) -> tuple[Snapshot, list[Problem]]:
    """What `serve` needs before it starts and what `check` reports, so both name the same
    problems: every file, the TLS pair, and the log files checked for appending."""
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
