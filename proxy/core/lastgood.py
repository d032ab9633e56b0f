"""The last good version of each file a snapshot reads, put back at a reload in place of a file
that cannot be used now, so one broken file costs only that file. Pure but for the parsers.

A file that parses but does not fit the others (an ACL rule naming no issuer once a second
issuer is configured) shows only when the whole is assembled: the caller then forces the
files the problems name (`blame`) and builds again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar, cast

from .problems import BadValue, ConfigError, Problem

T = TypeVar("T")
Key = tuple[str, Path]  # (what the file is, where it is): one path may be read two ways
Parsed = Mapping[Key, object]
Kept = tuple[Path, Problem]  # a file kept at its last good version, and one reason why


class LastGood:
    """The values read for one snapshot, with the previous snapshot's to fall back on."""

    def __init__(
        self,
        previous: Parsed | None = None,
        forced: Mapping[Path, list[Problem]] | None = None,
        unchanged: Callable[[Path], bool] = lambda _: False,
    ) -> None:
        """`previous`: the last snapshot's values (None at startup); `forced`: files to keep
        at their last good version, with the problems that made them so; `unchanged`: whether
        a file is as the last snapshot read it (and used it as it was)."""
        self._previous = previous
        self._forced = dict(forced or {})
        self._unchanged = unchanged
        self.parsed: dict[Key, object] = {}
        self.kept: list[Kept] = [(path, p) for path, found in self._forced.items() for p in found]

    def read(self, kind: str, path: Path, parse: Callable[[Path], T], pure: bool = False) -> T:
        """`parse(path)`, or at a reload this file's last good value when it cannot be used.
        `pure`: the value depends on the file's text alone, so an unchanged file's value is
        the last one (its ignored lines were reported when it was read)."""
        key = (kind, path)
        previous = self._previous or {}
        if key in previous and (path in self._forced or (pure and self._unchanged(path))):
            value = cast(T, previous[key])
        else:
            try:
                value = parse(path)
            except (ConfigError, BadValue) as exc:
                if key not in previous:  # at startup, or a new path: nothing to fall back on
                    raise
                self.kept.extend((path, problem) for problem in _problems(exc, path))
                value = cast(T, previous[key])
        self.parsed[key] = value
        return value

    def has(self, path: Path) -> bool:
        """Whether the previous snapshot read this file (so a reload may fall back on it)."""
        return self._previous is not None and any(p == path for _, p in self._previous)

    def blame(self, problems: Iterable[Problem]) -> dict[Path, list[Problem]]:
        """The files these problems are in that may still be kept at their last good version."""
        blamed: dict[Path, list[Problem]] = {}
        for problem in problems:
            path = Path(problem.source)
            if path not in self._forced and self.has(path):
                blamed.setdefault(path, []).append(problem)
        return blamed

    def force(self, blamed: Mapping[Path, list[Problem]]) -> dict[Path, list[Problem]]:
        """The forced files for the next attempt: these added to the ones forced now."""
        return {**self._forced, **blamed}


def _problems(exc: ConfigError | BadValue, path: Path) -> list[Problem]:
    if isinstance(exc, ConfigError):
        return exc.problems
    return [Problem(str(path), 0, str(exc))]  # a value's problem: the file is the culprit
