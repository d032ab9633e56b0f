"""The grants file (`grants.file`): a YAML list, written by `regproxy grant` and fine to edit
by hand. Pure but for `load_grants`."""

#   - id: g-3f9a61c2                    # [a-z0-9], then [a-z0-9._-], at most 64
#     user: alice                       # as they log in
#     actions: [push]                   # pull, push, delete
#     repositories: [apps/web, "apps/web-*"]   # globs as in the ACL (no ${user})
#     granted: "2026-12-01T09:00:00Z"   # in force from then ...
#     expires: "2026-12-01T11:00:00Z"   # ... until then: at most grants.max_duration later
#     reason: "INC-1234: hotfix for the checkout outage"
#     granted_by: bob                   # optional

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.moments import describe_duration, parse_duration, parse_moment, timestamp
from ..core.problems import Problem, read_text
from ..core.values import identifier, keyed, subset, text
from ..core.yamllist import EntryFormat, read_entries
from ..http.routes import ACTIONS
from .acl import fixed_globs
from .grants import NO_GRANTS, Grant, Grants

ROBOT_PREFIX = "robot$"  # robots never use grants (proxy.authn.robotfile names them so)
DEFAULT_MAX_DURATION = 8 * 3600
_KEYS = ("id", "user", "actions", "repositories", "granted", "expires", "reason", "granted_by")
_REQUIRED = _KEYS[:-1]


@dataclass(frozen=True)
class GrantSettings:
    """`grants:` in the config: the grants file (none: no grants) and the longest window a
    grant may have (seconds)."""

    file: Path | None = None
    max_duration: float = DEFAULT_MAX_DURATION


def parse_max_duration(value: object) -> float:
    """`grants.max_duration`: `30m`, `8h`, `2d`, ... or a number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        return float(parse_duration(value))
    raise ValueError(f"expected a duration like 8h or a positive number of seconds, got {value!r}")


def user_problem(user: object) -> str | None:
    """Why `user` cannot hold a grant, or None."""
    if not isinstance(user, str) or not user or not user.isprintable() or " " in user:
        return f"expected a user name as they log in, got {user!r}"
    if user.startswith(ROBOT_PREFIX):
        return f"{user!r}: robots have no grants (a robot is bounded by its owner and scopes)"
    return None


def _field(key: str, value: Any) -> Any:
    if key == "id":
        return keyed(identifier)(value, key)
    if key == "user":
        problem = user_problem(value)
        if problem:
            raise ValueError(f"user: {problem}")
        return value
    if key == "actions":
        return keyed(subset)(value, key, ACTIONS)
    if key == "repositories":
        return fixed_globs(value, key)
    if key in ("granted", "expires"):
        return keyed(parse_moment)(value, key)
    return keyed(text)(value, key)


def _window(max_duration: float) -> Callable[[dict[str, Any]], None]:
    def check(values: dict[str, Any]) -> None:
        length = values["expires"] - values["granted"]
        if length <= 0:
            raise ValueError("expires: must be after granted")
        if length > max_duration:
            longest = describe_duration(max_duration)
            raise ValueError(
                f"in force for {describe_duration(length)}, longer than grants.max_duration"
                f" ({longest})"
            )

    return check


def parse_grants(text: str, source: str, max_duration: float) -> tuple[Grants, list[Problem]]:
    """The usable grants of a file, and the entries that were skipped (file:line). Raises
    ConfigError when the file is not a YAML list at all."""
    form = EntryFormat("grant", _KEYS, _REQUIRED, "id", _field, _window(max_duration))
    entries, problems = read_entries(text, source, form)
    return Grants(Grant(origin=f"{source}:{line}", **values) for line, values in entries), problems


def load_grants(settings: GrantSettings) -> tuple[Grants, list[Problem]]:
    """The grants file; none configured, or a missing file, has no grants (`regproxy grant`
    makes it)."""
    path = settings.file
    if path is None or not path.exists():
        return NO_GRANTS, []
    return parse_grants(read_text(path), str(path), settings.max_duration)


def entry_text(grant: Grant) -> str:
    """A grant as a block of the file, to append."""
    fields: dict[str, Any] = {
        "id": grant.id,
        "user": grant.user,
        "actions": [a for a in ACTIONS if a in grant.actions],
        "repositories": list(grant.repositories),
        "granted": timestamp(grant.granted),
        "expires": timestamp(grant.expires),
        "reason": grant.reason,
    }
    if grant.granted_by:
        fields["granted_by"] = grant.granted_by
    return yaml.safe_dump([fields], sort_keys=False, default_flow_style=None, width=1000)
