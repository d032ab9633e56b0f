"""A snapshot: everything a request reads, built from the files at once and never mutated.

`load_snapshot` reads and parses every file (config, ACL, htpasswd, groups, token key, TLS
pair). It does blocking I/O and slow work (parsing a large htpasswd file, a dummy bcrypt hash,
loading certificates), so a running server calls it in a worker thread (`proxy.reload`); the
CLI calls it directly.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import config as config_module
from .authn.chain import Authenticators
from .authn.htpasswd import UserFiles
from .config import Config
from .credentials import Htpasswd, parse_groups, parse_htpasswd
from .policy import Rule
from .problems import ConfigError, Problem, read_text
from .tls import load_certificate, server_context
from .token import Signer, load_signer


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
        raise ConfigError(fatal)
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
) -> tuple[Snapshot, list[Problem]]:
    """Build a Snapshot from scratch: the snapshot and its line-level problems (those lines are
    ignored), or ConfigError with every problem found in every file when it is unusable.
    `tls` False skips the certificate (the CLI's `explain`, a reload that handles it apart)."""
    config = config_module.load(config_path, overrides)
    fatal: list[Problem] = []
    problems: list[Problem] = []
    try:
        users, problems = load_users(config, previous.users if previous else None)
    except ConfigError as exc:
        fatal += exc.problems
    signer, token_problems = load_signer(config.token) if config.token else (None, [])
    fatal += token_problems
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
    if fatal:
        raise ConfigError(fatal + problems)
    return Snapshot(config, users, config.rules, signer, context), problems
