"""Shared by every file reader: one problem in one file (`file:line: message`), the error that
carries all of them, safe reading of a file a user edits, and the YAML loader.

Config, ACL, LDAP settings, htpasswd and group files all report through these, so `check`,
`serve` and a live reload word a problem the same way.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    """One bad line in one file, printed as `source:line: message` (line 0: the whole file)."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found while loading, each `file:line: message`."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def read_text(path: Path) -> str:
    """A whole file as UTF-8; ConfigError (file:line) if unreadable, binary or huge."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([Problem(str(path), 0, f"cannot read: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(str(path), 0, f"larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(str(path), line, "not UTF-8 text")]) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise ConfigError([Problem(str(path), line, "binary data (NUL byte)")])
    return text


def compose_yaml(text: str, source: str) -> yaml.Node | None:
    """The YAML node tree of `text` (None for an empty document), keeping every node's line;
    ConfigError with the line of the syntax error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        message = f"invalid YAML: {getattr(exc, 'problem', None) or exc}"
        raise ConfigError([Problem(source, line, message)]) from None


def construct(node: yaml.Node) -> Any:
    """A node's Python value; unknown tags and bad values (`!!int two`) are ValueErrors."""
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read value: {getattr(exc, 'problem', None) or exc}") from None


def write_atomically(path: Path, text: str, mode: int = 0o640) -> None:
    """Write-then-rename in the same directory: readers see the old file or the new one (a new
    file gets `mode`, an existing one keeps its own)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else mode
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
