"""Live edits: watched files -> a new Snapshot, built in a worker thread, swapped in one
assignment; the snapshot a request holds stays whole until it finishes.

A file that cannot be used keeps its last good version while the others' edits apply; a
backend the new snapshot no longer uses is closed when the last request holding it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..authn.chain import Authenticators
from ..core.collector import collector_paused
from ..core.problems import ConfigError, Problem
from ..observe import metrics
from .config import Config
from .snapshot import Signature, Snapshot, load_snapshot, load_tls, signature, with_quarantine

log = logging.getLogger("regproxy.reload")

# Polling sees in-place edits, write-then-rename and Kubernetes' `..data` symlink swap alike,
# on any filesystem; a change is loaded once it stayed for one poll (no half-written file).
POLL_INTERVAL = 0.1  # a stat of each watched file ten times a second: edits apply in 0.1-0.2 s
# A change of the quarantine file alone is looked at again this soon rather than at the next
# poll, and only that file is read again: an `add` holds on every worker in 0.02-0.12 s, at no
# cost while nothing changes (a quarantine file is small: written whole well within this).
QUARANTINE_SETTLE = 0.02
# Config attributes the running process cannot change (sockets, processes, log handlers).
RESTART_ONLY = (
    "listen",
    "workers",
    "log_level",
    "access_log",
    "access_log_path",
    "audit_log",
    "metrics_listen",
    "state",
)
RESTART_ONLY_TIMEOUTS = ("keepalive", "header", "handshake")
RESTART_ONLY_LIMITS = ("connections", "connections_per_address", "upstream_connections")

# Builds a snapshot's Authenticators in the loading thread: (new snapshot, previous one).
AttachAuthn = Callable[[Snapshot, Snapshot | None], Authenticators]


@contextlib.contextmanager
def _sharing_the_interpreter() -> Iterator[None]:
    """While a thread builds a snapshot: the event loop gets the GIL often, the GC waits."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(interval / 10)  # requests wait for the lock between build steps
    # The cyclic collector would walk every user just loaded. The price: cyclic garbage
    # made meanwhile waits for the next full collection rather than a young one.
    try:
        with collector_paused():
            yield
    finally:
        sys.setswitchinterval(interval)


class Watcher:
    """Which watched files have changed and then stayed the same for one poll."""

    def __init__(self, seen: Mapping[Path, Signature]) -> None:
        """`seen`: each file as it was when it was read (`Snapshot.signatures`)."""
        self._seen = dict(seen)
        self._pending: dict[Path, Signature] = {}

    def stable_changes(self) -> list[Path]:
        now = {path: signature(path) for path in self._seen}
        changed = [p for p, sig in now.items() if sig != self._seen[p]]
        stable = [p for p in changed if self._pending.get(p, ...) == now[p]]
        self._pending = {p: now[p] for p in changed}
        if not changed or len(stable) != len(changed):
            return []
        self._seen = now  # an edit made while loading is seen at the next poll
        self._pending = {}
        return stable

    @property
    def pending(self) -> list[Path]:
        """The files seen changed at the last look, not yet stable."""
        return list(self._pending)

    def watch(self, files: tuple[Path, ...]) -> None:
        """Follow a new set of files (the config may name others after a reload)."""
        self._seen = {path: self._seen.get(path, signature(path)) for path in files}


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with restart-only settings kept at their running value, and the names changed."""
    kept = {name: getattr(old, name) for name in RESTART_ONLY}
    changed = [name for name in RESTART_ONLY if getattr(new, name) != kept[name]]
    timeouts = {name: getattr(old.timeouts, name) for name in RESTART_ONLY_TIMEOUTS}
    changed += [
        f"timeouts.{name}"
        for name in RESTART_ONLY_TIMEOUTS
        if getattr(new.timeouts, name) != timeouts[name]
    ]
    fixed = {name: getattr(old.limits, name) for name in RESTART_ONLY_LIMITS}
    changed += [f"limits.{n}" for n, v in fixed.items() if getattr(new.limits, n) != v]
    limits = replace(new.limits, **fixed)
    merged = replace(new, **kept, timeouts=replace(new.timeouts, **timeouts), limits=limits)
    return merged, changed


@dataclass(frozen=True)
class Loaded:
    """The outcome of loading the files again, and what to tell the operator."""

    snapshot: Snapshot | None
    refused: list[Problem] = field(default_factory=list)
    ignored_lines: list[Problem] = field(default_factory=list)
    restart_only: list[str] = field(default_factory=list)
    tls_problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every file applied as it is now (a file kept at its last good version is not)."""
        kept = self.snapshot is not None and self.snapshot.kept
        return self.snapshot is not None and not self.tls_problems and not kept


def load_next(
    previous: Snapshot,
    config_path: Path | None,
    overrides: Mapping[str, object],
    attach: AttachAuthn | None = None,
    reread: bool = False,
) -> Loaded:
    """Everything for the next snapshot (blocking: a worker thread, or the CLI);
    `reread`: every file parsed again, changed or not."""
    try:
        snapshot, problems = load_snapshot(
            config_path, overrides, previous, tls=False, reread=reread
        )
    except ConfigError as exc:
        return Loaded(None, refused=exc.problems)
    config, changed = keep_restart_only(previous.config, snapshot.config)
    tls_problems: list[Problem] = []
    context, expires = None, None
    try:
        if previous.tls is not None:
            context, expires = load_tls(config)
    except ConfigError as exc:
        tls_problems, context, expires = exc.problems, previous.tls, previous.tls_expires
    snapshot = replace(snapshot, config=config, tls=context, tls_expires=expires)
    if attach is not None:
        try:
            snapshot = replace(snapshot, authn=attach(snapshot, previous))
        except Exception as exc:  # whatever a backend raises refuses the reload, never the watch
            source = str(config_path) if config_path is not None else "command line"
            message = f"cannot build the authentication backends: {exc}"
            return Loaded(None, refused=[Problem(source, 0, message)])
    return Loaded(snapshot, [], problems, changed, tls_problems)


def report(loaded: Loaded, reason: str, quiet: bool = False) -> None:
    """Log a reload's outcome (`quiet`: debug level, as worker 0 says it for all)."""
    for problem in loaded.refused:
        (log.debug if quiet else log.error)(
            "reload failed, keeping the last good configuration: %s", problem
        )
    if loaded.snapshot is None:
        return
    for path, problem in loaded.snapshot.kept:
        (log.debug if quiet else log.error)(
            "reload failed for %s, keeping its last good version: %s", path, problem
        )
    for problem in loaded.ignored_lines:
        (log.debug if quiet else log.warning)("%s (line ignored)", problem)
    for name in loaded.restart_only:
        (log.debug if quiet else log.warning)(
            "%s changed in the config: takes effect at the next restart", name
        )
    for problem in loaded.tls_problems:
        (log.debug if quiet else log.error)(
            "TLS reload failed, keeping the current certificate: %s", problem
        )
    (log.debug if quiet else log.info)("configuration reloaded (%s)", reason)


@dataclass
class _Holders:
    """The requests holding one snapshot, and whether it has been replaced meanwhile."""

    snapshot: Snapshot
    count: int = 0
    retired: bool = False


class State:
    """Holds the current Snapshot and reloads it when its files change."""

    def __init__(
        self,
        snapshot: Snapshot,
        config_path: Path | None,
        overrides: Mapping[str, object],
        attach: AttachAuthn | None = None,
        quiet: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.current = snapshot
        self._executor = executor  # where loading runs (None: the loop's default executor)
        self._config_path = config_path
        self._overrides = dict(overrides)
        self._attach = attach
        self._quiet = quiet  # one of several workers, not worker 0: worker 0 reports reloads
        self._watcher = Watcher(snapshot.signatures)
        self._holders: dict[int, _Holders] = {}
        self._loading = asyncio.Lock()

    async def start(self) -> None:
        """Attach the running server's backends to the first snapshot (off the loop); tell
        the metrics when its certificate expires."""
        if self._attach is not None and self.current.authn is None:
            first = self.current
            loop = asyncio.get_running_loop()
            authn = await loop.run_in_executor(self._executor, self._attach, first, None)
            self.current = replace(first, authn=authn)
        self._tell_metrics()

    def enter(self) -> Snapshot:
        """The snapshot a request uses from start to end; `leave` it when done."""
        snapshot = self.current
        holders = self._holders.get(id(snapshot))
        if holders is None:
            holders = self._holders[id(snapshot)] = _Holders(snapshot)
        holders.count += 1
        return snapshot

    def leave(self, snapshot: Snapshot) -> None:
        holders = self._holders[id(snapshot)]
        holders.count -= 1
        if holders.count == 0:
            del self._holders[id(snapshot)]
            if holders.retired:
                self._close_unused(snapshot)

    async def reload(self, reason: str = "reload requested", reread: bool = False) -> bool:
        """Load everything again in a worker thread (`reread`: parse even the files that did
        not change); True if a new snapshot was swapped in."""
        async with self._loading:
            previous = self.current
            load = functools.partial(
                load_next, previous, self._config_path, self._overrides, self._attach, reread
            )
            with _sharing_the_interpreter():
                loaded = await asyncio.get_running_loop().run_in_executor(self._executor, load)
            report(loaded, reason, self._quiet)
            metrics.RECORD.reloaded(loaded.ok)
            if loaded.snapshot is None:
                return False
            self._swap(previous, loaded.snapshot)
            self._watcher.watch(loaded.snapshot.config.watched_files())
            self._tell_metrics()
            return True

    async def _reload_quarantine(self, reason: str) -> None:
        """Read the quarantine file again (in a worker thread), the rest of the snapshot kept."""
        async with self._loading:
            previous = self.current
            if _quarantine_file(previous) is None:
                return  # a full reload meanwhile stopped naming one
            load = functools.partial(with_quarantine, previous)
            try:
                snapshot, problems = await asyncio.get_running_loop().run_in_executor(
                    self._executor, load
                )
            except ConfigError as exc:  # never read well before: nothing to fall back on
                loaded = Loaded(None, refused=exc.problems)
            else:
                loaded = Loaded(snapshot, ignored_lines=problems)
                self._swap(previous, snapshot)
            report(loaded, reason, self._quiet)
            metrics.RECORD.reloaded(loaded.ok)

    def _tell_metrics(self) -> None:
        """Tell the metrics when the served certificate expires and which rate-limit budgets
        there are (the same again unless a reload changed them)."""
        if self.current.tls_expires is not None:
            metrics.RECORD.certificate_expires(self.current.tls_expires)
        rate_limits = self.current.config.rate_limits
        if rate_limits is not None:
            metrics.RECORD.rate_limit_budgets(rate_limits.labels())

    def _swap(self, previous: Snapshot, snapshot: Snapshot) -> None:
        self.current = snapshot
        holders = self._holders.get(id(previous))
        if holders is None:
            self._close_unused(previous)
        else:
            holders.retired = True

    def _close_unused(self, old: Snapshot) -> None:
        """Close the backends no snapshot still in use holds."""
        if old.authn is None:
            return
        in_use = [self.current, *(holders.snapshot for holders in self._holders.values())]
        keep = {id(b) for snapshot in in_use if snapshot.authn for b in snapshot.authn.backends}
        for backend in old.authn.backends:
            if id(backend) not in keep:
                backend.close()

    def close(self) -> None:
        """At shutdown: close the current snapshot's backends."""
        if self.current.authn is not None:
            for backend in self.current.authn.backends:
                backend.close()

    async def watch(self) -> None:
        """Poll forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            changed = self._watcher.stable_changes()
            quarantine = [_quarantine_file(self.current)]
            if not changed and self._watcher.pending == quarantine:
                await asyncio.sleep(QUARANTINE_SETTLE)
                changed = self._watcher.stable_changes()
            reason = ", ".join(f"{p} changed" for p in changed)
            if changed == quarantine:
                await self._reload_quarantine(reason)
            elif changed:
                await self.reload(reason)


def _quarantine_file(snapshot: Snapshot) -> Path | None:
    return snapshot.config.quarantine.file
