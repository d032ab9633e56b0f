"""A snapshot: everything a request reads, built from the files at once and never mutated.

`load_snapshot` reads and parses every file (config, ACL, htpasswd, groups, robots, grants,
the server's secret, token key, TLS pair). It does blocking I/O and slow work (parsing a large
htpasswd file, loading certificates), so a running server calls it in a
worker thread (`proxy.conf.reload`); the CLI calls it directly.

At startup any problem in any file is fatal. At a reload one broken file costs only that file:
it keeps its last good version (`proxy.core.lastgood`) while every other file's edits apply,
and `Snapshot.kept` says which and why.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from ..authn.chain import Authenticators
from ..authn.credentials import Htpasswd, parse_groups, parse_htpasswd
from ..authn.htpasswd import UserFiles
from ..authn.robotfile import Robot, derive, load_robots, read_secret_file
from ..core.collector import collector_paused
from ..core.lastgood import Kept, LastGood, Parsed
from ..core.problems import ConfigError, Problem, read_text
from ..http.tls import certificate_expiry, load_certificate, server_context
from ..policy.grantfile import GrantSettings, load_grants
from ..policy.grants import NO_GRANTS, Grants
from ..policy.quarantine import NO_QUARANTINE, Quarantine
from ..policy.quarantinefile import QuarantineSettings, load_quarantine
from ..policy.rules import RuleSet
from ..tokenserver.scopes import Signer, TokenSettings, load_signer
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
    rules: RuleSet
    signer: Signer | None = None  # token server mode
    tls: ssl.SSLContext | None = None
    authn: Authenticators | None = None
    # Each watched file as it was just before it was read: an edit made while the files
    # were being loaded is seen as an edit afterwards, never lost.
    signatures: Mapping[Path, Signature] = field(default_factory=dict, compare=False)
    robots: Mapping[str, Robot] = field(default_factory=lambda: MappingProxyType({}))
    secret: bytes | None = field(default=None, repr=False)  # the config's secret_file
    grants: Grants = NO_GRANTS  # break-glass grants (in force or not: checked per request)
    quarantine: Quarantine = NO_QUARANTINE  # the quarantine file's (proxy.guards.quarantine)
    # What each file parsed to (the next reload's fallback), and the files kept at their last
    # good version in this one, with why.
    parsed: Parsed = field(default_factory=dict, compare=False, repr=False)
    kept: tuple[Kept, ...] = ()
    tls_expires: float | None = None  # when the certificate `tls` serves expires (UNIX time)

    def key(self, purpose: str) -> bytes | None:
        """A key derived from the server's secret for one purpose, if there is a secret."""
        return derive(self.secret, purpose) if self.secret is not None else None


def load_users(
    config: Config, previous: UserFiles | None = None, files: LastGood | None = None
) -> tuple[UserFiles, list[Problem]]:
    """Parse htpasswd (when that backend is used) and groups, through `files` (at a reload,
    with the last good versions to fall back on). Raises ConfigError if a file cannot be used
    at all (with the bad lines of the others); returns line-level problems (those lines are
    ignored)."""
    files = files or LastGood()
    fatal: list[Problem] = []
    htpasswd = Htpasswd({})
    groups: dict[str, frozenset[str]] = {}
    problems: list[Problem] = []  # of the files read now (a kept file said its own before)

    def read_htpasswd(path: Path) -> Htpasswd:
        read = parse_htpasswd(read_text(path), str(path))
        if not read.users:
            # Empty or all lines bad: most likely a truncated or half-written file.
            raise ConfigError([Problem(str(path), 0, "no usable users in this file")])
        problems.extend(read.problems)
        return read

    def read_groups(path: Path) -> dict[str, frozenset[str]]:
        read, group_problems = parse_groups(read_text(path), str(path))
        problems.extend(group_problems)
        return read

    if "htpasswd" in config.auth_backends:
        try:
            htpasswd = files.read("htpasswd", config.htpasswd, read_htpasswd, pure=True)
        except ConfigError as exc:
            fatal.extend(exc.problems)
    if config.groups is not None:
        try:
            groups = files.read("groups", config.groups, read_groups, pure=True)
        except ConfigError as exc:
            fatal.extend(exc.problems)
    if fatal:
        raise ConfigError(fatal + problems)
    if previous is not None and previous.htpasswd is htpasswd and previous.groups is groups:
        return previous, problems  # both files unchanged: nothing to build again
    return UserFiles.build(htpasswd, groups, previous.dummy if previous else None), problems


def load_tls(config: Config) -> tuple[ssl.SSLContext, float | None]:
    """A new server context with the configured pair, and when its certificate expires;
    ConfigError naming what is wrong."""
    context = server_context()
    problems = load_certificate(context, config.tls_cert, config.tls_key)
    if problems:
        raise ConfigError(problems)
    return context, certificate_expiry(config.tls_cert)


def load_snapshot(
    config_path: Path | None,
    overrides: Mapping[str, object],
    previous: Snapshot | None = None,
    tls: bool = True,
    startup: bool = False,
    reread: bool = False,
) -> tuple[Snapshot, list[Problem]]:
    """Build a Snapshot from scratch: the snapshot and its line-level problems (those lines are
    ignored), or ConfigError with every problem found in every file when it is unusable.
    `previous` (a reload): the htpasswd, group and ACL files it read are parsed again only
    when changed (`reread`: every file is, SIGHUP); a file that cannot be used, or whose
    content does not fit with the others, keeps its last good version when its path is
    unchanged (`Snapshot.kept`); a config edit naming files that cannot be used keeps the
    last good config. `tls` False skips the
    certificate (the CLI's `explain`, a reload that handles it apart); `startup` also checks
    the log files can be appended to (they are opened only at start)."""
    with collector_paused():
        unchanged = _unchanged(None if reread else previous)
        return _last_good(config_path, overrides, previous, tls, startup, unchanged)


def _last_good(
    config_path: Path | None,
    overrides: Mapping[str, object],
    previous: Snapshot | None,
    tls: bool,
    startup: bool,
    unchanged: Callable[[Path], bool],
) -> tuple[Snapshot, list[Problem]]:
    """`load_snapshot`, each file that cannot be used in turn put back at its last good
    version."""
    forced: dict[Path, list[Problem]] = {}
    while True:
        files = LastGood(previous.parsed if previous else None, forced, unchanged)
        try:
            return _load(config_path, overrides, files, previous, tls, startup)
        except ConfigError as exc:
            if previous is None:
                raise
            blamed = files.blame(exc.problems)
            if not blamed and config_path is not None and config_path not in forced:
                blamed = {config_path: exc.problems} if files.has(config_path) else {}
            if not blamed:
                raise
            forced = files.force(blamed)


def _unchanged(previous: Snapshot | None) -> Callable[[Path], bool]:
    """Whether a file is as `previous` read it, and it used what it read (not a last good
    version kept in place of a broken file)."""
    if previous is None:
        return lambda _: False
    kept = {path for path, _ in previous.kept}
    recorded = previous.signatures

    def unchanged(path: Path) -> bool:
        now = signature(path)
        return now is not None and recorded.get(path) == now and path not in kept

    return unchanged


def _load(
    config_path: Path | None,
    overrides: Mapping[str, object],
    files: LastGood,
    previous: Snapshot | None,
    tls: bool,
    startup: bool,
) -> tuple[Snapshot, list[Problem]]:
    first = {config_path: signature(config_path)} if config_path is not None else {}
    config = config_module.load(config_path, overrides, files)
    signatures = {path: signature(path) for path in config.watched_files()} | first
    fatal: list[Problem] = []
    problems: list[Problem] = []
    try:
        users, problems = load_users(config, previous.users if previous else None, files)
    except ConfigError as exc:
        fatal += exc.problems
    signer = None
    try:
        signer = _read_signer(config.token, files) if config.token else None
    except ConfigError as exc:
        fatal += exc.problems
    secret: bytes | None = None
    robots: dict[str, Robot] = {}
    try:
        secret = (
            files.read("secret", config.secret_file, read_secret_file)
            if config.secret_file
            else None
        )
        if config.robots is not None:
            robots = files.read("robots", config.robots, lambda path: _read_robots(path, problems))
    except ConfigError as exc:
        fatal += exc.problems
    grants = NO_GRANTS
    try:
        if config.grants.file is not None:
            grants = files.read(
                "grants", config.grants.file, lambda _: _read_grants(config.grants, problems)
            )
    except ConfigError as exc:
        fatal += exc.problems
    quarantine = NO_QUARANTINE
    try:
        if config.quarantine.file is not None:
            quarantine = files.read(
                "quarantine",
                config.quarantine.file,
                lambda _: _read_quarantine(config.quarantine, problems),
            )
    except ConfigError as exc:
        fatal += exc.problems
    context, expires = None, None
    try:
        if tls:
            context, expires = load_tls(config)
    except ConfigError as exc:
        fatal += exc.problems
    if config.state.password_file is not None:
        try:
            files.read("state password", config.state.password_file, read_text)
        except ConfigError as exc:
            fatal += exc.problems
    if startup:
        fatal += _log_file_problems(config)
    if fatal:
        raise ConfigError(fatal + problems)
    # Indexed anew at each reload, here off the event loop: a new RuleSet is what tells the
    # catalog's per-viewer cache that a reload happened.
    rules = RuleSet(config.rules)
    snapshot = Snapshot(
        config, users, rules, signer, context, None, signatures, MappingProxyType(robots), secret,
        grants, quarantine, files.parsed, tuple(files.kept), expires,
    )  # fmt: skip
    return snapshot, problems


def _read_signer(settings: TokenSettings, files: LastGood) -> Signer:
    """The token server's key and certificate (read together: kept together)."""

    def read(_: Path) -> Signer:
        signer, problems = load_signer(settings)
        if signer is None:
            raise ConfigError(problems)
        return signer

    return files.read(f"token key for {settings.certificate}", settings.key, read)


def _read_robots(path: Path, problems: list[Problem]) -> dict[str, Robot]:
    """The robots file's robots; the entries it skipped are added to `problems`."""
    robots, skipped = load_robots(path)
    problems.extend(skipped)
    return robots


def _read_grants(settings: GrantSettings, problems: list[Problem]) -> Grants:
    """The grants file's grants; the entries it skipped are added to `problems`."""
    grants, skipped = load_grants(settings)
    problems.extend(skipped)
    return grants


def with_quarantine(previous: Snapshot) -> tuple[Snapshot, list[Problem]]:
    """`previous` with only its quarantine file read again (everything else as it is), and
    the entries that file skipped; a file that cannot be used keeps its last good version."""
    settings = previous.config.quarantine
    assert settings.file is not None
    path, problems = settings.file, list[Problem]()
    first = signature(path)  # before reading: an edit made meanwhile is seen afterwards
    files = LastGood(previous.parsed)
    quarantine = files.read("quarantine", path, lambda _: _read_quarantine(settings, problems))
    snapshot = replace(
        previous,
        quarantine=quarantine,
        signatures={**previous.signatures, path: first},
        parsed={**previous.parsed, **files.parsed},
        kept=(*(kept for kept in previous.kept if kept[0] != path), *files.kept),
    )
    return snapshot, problems


def _read_quarantine(settings: QuarantineSettings, problems: list[Problem]) -> Quarantine:
    """The quarantine file's entries; the entries it skipped are added to `problems`."""
    quarantine, skipped = load_quarantine(settings)
    problems.extend(skipped)
    return quarantine


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
