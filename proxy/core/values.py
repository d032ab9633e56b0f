"""Validators of single config values, shared by every settings parser. Pure.

Each returns the value checked, or raises ValueError saying what was expected and found,
without the key; `keyed` makes one whose errors name the key (`BadValue`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from .problems import BadValue

T = TypeVar("T")
IDENTIFIER_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
P = ParamSpec("P")


def keyed(parse: Callable[Concatenate[Any, P], T]) -> Callable[Concatenate[Any, str, P], T]:
    """`parse(value, ...)` as `parse(value, key, ...)`, raising `BadValue("key: message")`."""

    def parse_key(value: Any, key: str, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return parse(value, *args, **kwargs)
        except ValueError as exc:
            raise BadValue(f"{key}: {exc}") from None

    return parse_key


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def seconds(
    value: Any, *, high: float = math.inf, zero: bool = False, wanted: str | None = None
) -> float:
    """A finite number of seconds above 0 (or 0 too, with `zero`), at most `high`."""
    if math.isfinite(high):
        kind = "a number of seconds"
        default = f"0 to {high:g}" if zero else f"more than 0 and at most {high:g}"
        wanted = wanted or f"{default} seconds"
    else:
        wanted = wanted or f"{'0 (off) or ' if zero else ''}a positive number of seconds"
        kind = wanted
    # Booleans are ints to Python, and YAML reads `.inf` and `.nan` as floats: none is a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected {kind}, got {value!r}")
    if not 0 <= value <= high or (value == 0 and not zero):
        raise ValueError(f"expected {wanted}, got {value!r}")
    return float(value)


def whole_number(value: Any, low: int = 1, high: int | None = None) -> int:
    """An integer from `low` up (to `high`, if given): counts, sizes, numbers of workers."""
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if number is None or number < low or (high is not None and number > high):
        if high is not None:
            wanted = f"a whole number from {low} to {high}"
        else:
            wanted = "a positive integer" if low == 1 else f"a whole number from {low} up"
        raise ValueError(f"expected {wanted}, got {value!r}")
    return number


def identifier(value: Any) -> str:
    """A name for an entry of a list file (a robot, a grant): [a-z0-9], then [a-z0-9._-]."""
    if not isinstance(value, str) or not IDENTIFIER_RE.fullmatch(value):
        raise ValueError(f"expected [a-z0-9] then [a-z0-9._-] (64 at most), got {value!r}")
    return value


def port(number: int) -> int:
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range 1-65535")
    return number


def text(value: Any) -> str:
    """One line of printable text, not only spaces."""
    if not isinstance(value, str):
        # A number or a date in YAML is no text until it is quoted.
        raise ValueError(f"expected a non-empty string (quote it), got {value!r}")
    if not value.strip() or not value.isprintable():
        raise ValueError(f"expected one line of text, got {value!r}")
    return value


def name(value: Any, noun: str = "name") -> str:
    """A user or group name as files and headers carry it: no spaces, no ':'."""
    if not isinstance(value, str) or not value or any(c.isspace() or c == ":" for c in value):
        raise ValueError(f"expected a {noun} without spaces or ':', got {value!r}")
    return value


def strings(value: Any, noun: str = "name") -> tuple[str, ...]:
    """One printable string, or a non-empty list of them."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v and v.isprintable() for v in items):
        raise ValueError(f"expected a {noun} or a list of {noun}s, got {value!r}")
    return tuple(items)


def choice(value: Any, choices: Collection[str], words: str | None = None) -> str:
    """One of `choices`, in any case; `words` says them, if not `one of a, b, c`."""
    if value is False and "off" in choices:
        return "off"  # YAML 1.1 reads a bare `off` as false
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"expected {words or 'one of ' + ', '.join(choices)}, got {value!r}")
    return value.lower()


def subset(value: Any, choices: Collection[str]) -> frozenset[str]:
    """One of `choices`, or a non-empty list of them."""
    items = value if isinstance(value, list) else [value]
    if not items or any(not isinstance(v, str) or v not in choices for v in items):
        raise ValueError(f"expected a list of {', '.join(choices)}, got {value!r}")
    return frozenset(items)


def file_path(value: Any, base: Path) -> Path:
    """A file name, relative to `base` unless it is absolute."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"expected a file path, got {value!r}")
    return base / value
