"""The CLI's file edits: a list file a running proxy watches (robots, grants) edited under a
lock, every line the edit does not touch kept, and whole files written (`write`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from ..core.problems import read_text, write_atomically
from ..core.yamllist import appendable, appended, entry_spans, without_entries


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[str]:
    """Hold the file's lock; yields its text ('' when it does not exist yet)."""
    # Two commands at once cannot lose an edit.
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield read_text(path) if path.exists() else ""
    finally:
        os.close(fd)  # releases the lock


class Refused(Exception):
    """Why an entry is not appended (said to the user as it is)."""


def append(path: Path, header: str, make: Callable[[str], str]) -> None:
    """Append the entry `make(the current text)` returns, under the lock. Refused when `make`
    refuses, or when the file is not a block list (a hand edit the CLI leaves alone)."""
    with exclusive(path) as text:
        if not appendable(text, str(path)):
            raise Refused(f"{path} is not a block list: edit it by hand")
        write_atomically(path, appended(text, make(text), header))


def remove(path: Path, key: str, values: Collection[str]) -> int:
    """Remove the entries whose `key` is one of `values`, under the lock; how many there were."""
    with exclusive(path) as text:
        if not text:
            return 0
        count = len(entry_spans(text, str(path), key, values))
        if count:
            kept = without_entries(text, str(path), key, values)
            assert kept is not None
            write_atomically(path, kept)
    return count


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines of left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def write(path: Path, text: str) -> bool:
    """Write-then-rename (`write_atomically`); False after printing why it cannot be written."""
    try:
        write_atomically(path, text)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
        print(f"{path}: cannot write: {exc.strerror or exc}{where}", file=sys.stderr)
        return False
    return True
