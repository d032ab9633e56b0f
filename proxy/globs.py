"""Globs as rules write them, for repository names and claim values. Pure."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` stay within one path component; `**` crosses `/`."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(p, re.escape(p)) for p in parts), re.DOTALL)
