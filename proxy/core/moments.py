"""Moments and durations as people write them in files and on the command line. Pure."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

_DURATION_RE = re.compile(r"(\d{1,7})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
DURATION_FORMS = "90s, 30m, 8h, 2d or 1w"


def timestamp(moment: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time to the second."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> int:
    """Seconds in `90s`, `30m`, `8h`, `2d` or `1w`; ValueError for anything else or zero."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected {DURATION_FORMS}, got {text!r}")
    seconds = int(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return seconds


def describe_duration(seconds: float) -> str:
    """The largest whole unit that states `seconds` exactly (`28800` -> `8h`)."""
    whole = int(seconds)
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if whole % size == 0 and whole == seconds:
            return f"{whole // size}{unit}"
    return f"{seconds:g}s"


def parse_moment(value: Any) -> float:
    """Epoch seconds of an ISO 8601 date or time (UTC unless it says), text or as YAML read it."""
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):  # YAML reads an unquoted 2030-01-01 as a date
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if not isinstance(moment, datetime):
        raise ValueError(f"expected an ISO 8601 date and time, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
