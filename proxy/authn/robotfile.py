"""Robot accounts: scoped, expiring, revocable credentials for scripts and CI, each acting for
an owner. The robots file and the secrets' keyed hashes; pure but for `read_secret_file`."""

# The robots file, written by `regproxy robot` and fine to edit by hand:
#
#   - name: ci-app                      # [a-z0-9], then [a-z0-9._-], at most 64
#     owner: alice                      # optional: whose rights bound the robot's
#     repositories: [apps/app, "apps/app-*"]   # globs as in the ACL (no ${user})
#     actions: [pull, push]             # pull, push, delete
#     expires: "2026-12-31T00:00:00Z"
#     secret: "hmac-sha256:..."
#     description: release pipeline     # optional
#     created: "2026-12-01T09:00:00Z"   # optional, informational

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.moments import parse_duration, parse_moment, timestamp
from ..core.problems import ConfigError, Problem, read_text
from ..core.values import identifier, keyed, name, strings, subset
from ..core.yamllist import EntryFormat, read_entries
from ..http.routes import ACTIONS, Action
from ..policy.acl import glob_problem

# A secret is this prefix (for secret scanners) and 256 random bits. The file keeps only
# HMAC-SHA256 of it, keyed from `secret_file`: a slow hash would buy nothing for a random
# secret, and a stolen robots file alone does not even allow trying.
SECRET_PREFIX = "regproxy_robot_"
SECRET_RE = re.compile(rf"{SECRET_PREFIX}[A-Za-z0-9_-]{{43}}")
USER_PREFIX = "robot$"
HASH_SCHEME = "hmac-sha256:"
MIN_SECRET = 32  # characters of the server's secret_file
_KEYS = ("name", "owner", "repositories", "actions", "expires", "secret", "description",
         "created")  # fmt: skip
_REQUIRED = ("name", "repositories", "actions", "expires", "secret")


@dataclass(frozen=True)
class Robot:
    name: str
    secret_hash: str = field(repr=False)
    repositories: tuple[str, ...]
    actions: frozenset[Action]
    expires: float  # epoch seconds
    owner: str | None = None
    description: str = ""
    created: str = ""
    origin: str = ""  # file:line

    @property
    def user(self) -> str:
        return USER_PREFIX + self.name


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def derive(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose from the server's secret (robots, upload bindings)."""
    return hmac.new(secret, f"regproxy {purpose} v1".encode(), hashlib.sha256).digest()


def secret_hash(key: bytes, secret: str) -> str:
    digest = hmac.new(key, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return HASH_SCHEME + base64.b64encode(digest).decode()


def read_secret_file(path: Path) -> bytes:
    """The server's secret; ConfigError when unreadable or too short to be a key."""
    secret = read_text(path).strip()
    if len(secret) < MIN_SECRET:
        message = f"secret_file: at least {MIN_SECRET} random characters needed"
        raise ConfigError([Problem(str(path), 0, message)])
    return secret.encode()


def parse_expiry(text: str, now: float) -> float:
    """`30d`, `12h`, `2w` from now, or an ISO 8601 date or time (UTC unless it says)."""
    try:
        return now + parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_moment(text)
    except ValueError:
        raise ValueError(f"expected 30d, 12h, 2w or an ISO 8601 date, got {text!r}") from None


def _field(key: str, value: Any) -> Any:
    if key == "name":
        return keyed(identifier)(value, key)
    if key == "owner":
        return keyed(name)(value, key, "user name")
    if key == "repositories":
        items = keyed(strings)(value, key, "glob")
        for glob in items:
            problem = glob_problem(glob)
            if problem is None and "${" in glob:
                problem = f"{glob!r}: a robot's scopes have no ${{user}} or ${{group}}"
            if problem:
                raise ValueError(f"repositories: {problem}")
        return items
    if key == "actions":
        return keyed(subset)(value, key, ACTIONS)
    if key == "expires":
        return keyed(parse_moment)(value, key)
    if key == "secret":
        if not isinstance(value, str) or not value.startswith(HASH_SCHEME):
            raise ValueError(f"secret: expected {HASH_SCHEME}... (written by regproxy robot)")
        return value
    return "" if value is None else str(value)


_FORMAT = EntryFormat("robot", _KEYS, _REQUIRED, "name", _field)


def parse_robots(text: str, source: str) -> tuple[dict[str, Robot], list[Problem]]:
    """The robots of a file by name, and the entries that were skipped (file:line). Raises
    ConfigError when the file is not a YAML list at all."""
    entries, problems = read_entries(text, source, _FORMAT)
    robots = {}
    for line, values in entries:
        values["secret_hash"] = values.pop("secret")
        robots[values["name"]] = Robot(origin=f"{source}:{line}", **values)
    return robots, problems


def load_robots(path: Path) -> tuple[dict[str, Robot], list[Problem]]:
    """The robots file; a missing file has no robots (`regproxy robot create` makes it)."""
    if not path.exists():
        return {}, []
    return parse_robots(read_text(path), str(path))


def entry_text(robot: Robot) -> str:
    """A robot as a block of the file, to append."""
    fields: dict[str, Any] = {"name": robot.name}
    if robot.owner:
        fields["owner"] = robot.owner
    fields["repositories"] = list(robot.repositories)
    fields["actions"] = [a for a in ACTIONS if a in robot.actions]
    fields["expires"] = timestamp(robot.expires)
    fields["secret"] = robot.secret_hash
    if robot.description:
        fields["description"] = robot.description
    if robot.created:
        fields["created"] = robot.created
    return yaml.safe_dump([fields], sort_keys=False, default_flow_style=None, width=1000)


def expired(robot: Robot, now: float) -> bool:
    return robot.expires <= now


def usage_path(robots: Path) -> Path:
    """Where the workers record when each robot was last used."""
    return robots.with_name(robots.name + ".last-used")
