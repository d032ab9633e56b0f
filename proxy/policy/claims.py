"""Claims of a verified workload token as rules and settings read them: conditions (claim ->
globs, some value matching some glob) and user-name templates (`ci:{repository}`). Pure."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .globs import glob_regex

Conditions = tuple[tuple[str, tuple[str, ...]], ...]  # (claim name, globs: any of them)

CLAIM_NAME_RE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
MAX_NAME = 256


# A name with `/` that is not itself a key walks into nested objects
# (`kubernetes.io/namespace`); a scalar is read as text (`true`, `42`), a list as each of its
# scalars, objects and nulls never.
def lookup(claims: Mapping[str, Any], name: str) -> Any:
    """The claim's value, or None when there is none."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


def texts(claims: Mapping[str, Any], name: str) -> list[str]:
    """Every text value of a claim: one for a scalar, one per scalar element of a list."""
    value = lookup(claims, name)
    items = value if isinstance(value, list) else [value]
    return [text for text in map(_text, items) if text is not None]


def scalar(claims: Mapping[str, Any], name: str) -> str | None:
    """The claim as one text (not a list, not an object), or None."""
    return _text(lookup(claims, name))


def holds(conditions: Conditions, claims: Mapping[str, Any]) -> bool:
    """Whether every condition holds for these claims."""
    return not unmet(conditions, claims)


def unmet(conditions: Conditions, claims: Mapping[str, Any]) -> str | None:
    """The name of the first claim whose condition does not hold, or None."""
    for name, globs in conditions:
        values = texts(claims, name)
        if not any(glob_regex(g).fullmatch(v) for g in globs for v in values):
            return name
    return None


def template_names(template: str) -> list[str] | None:
    """The claim names a template reads, or None when it is malformed (an unpaired brace, an
    empty or bad name). A template without braces is one claim name."""
    if "{" not in template and "}" not in template:
        return [template] if CLAIM_NAME_RE.fullmatch(template) else None
    names = _PLACEHOLDER_RE.findall(template)
    if _PLACEHOLDER_RE.sub("", template).count("{") or "}" in _PLACEHOLDER_RE.sub("", template):
        return None
    if not names or not all(CLAIM_NAME_RE.fullmatch(n) for n in names):
        return None
    return names


def render(template: str, claims: Mapping[str, Any]) -> str | None:
    """The template filled in from the claims, or None when a claim it reads is missing or
    not a scalar, or the result is not a usable name (empty, spaces, control characters)."""
    if "{" not in template:
        result = scalar(claims, template)
    else:
        missing = False

        def fill(match: re.Match[str]) -> str:
            nonlocal missing
            value = scalar(claims, match[1])
            missing = missing or value is None
            return value or ""

        result = _PLACEHOLDER_RE.sub(fill, template)
        if missing:
            return None
    if not result or len(result) > MAX_NAME or not result.isprintable() or " " in result:
        return None
    return result
