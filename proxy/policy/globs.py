"""Globs as rules write them, for repository names, tags and claim values. Pure."""

from __future__ import annotations

import re
from functools import lru_cache

_WILD = {"**": ".*", "*": "[^/]*", "?": "[^/]"}


def glob_pattern(pattern: str, holders: bool = False) -> str:
    """`*` and `?` stay within one path component; `**` crosses `/`. With `holders`, a
    placeholder that is a whole path component becomes a group capturing that component."""
    out = []
    for part in re.split(r"(\*\*|\*|\?|\$\{user\}|\$\{group\})", pattern):
        if holders and part in ("${user}", "${group}"):
            out.append("([^/]+)")
        else:
            out.append(_WILD.get(part, re.escape(part)))
    return "".join(out)


@lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob without placeholders (or with them filled in), compiled. Dot matches newlines
    too: claim values may hold them."""
    return re.compile(glob_pattern(pattern), re.DOTALL)
