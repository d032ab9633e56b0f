"""The robot backend: `robot$NAME` and its secret, checked with one HMAC; a robot secret
never reaches a password backend. When each robot was last used (`RobotUsage`)."""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TextIO

from ..core.moments import timestamp
from ..policy.identity import RobotGrant
from . import AuthResult, Outcome
from .htpasswd import UserFiles
from .robotfile import SECRET_PREFIX, USER_PREFIX, Robot, expired, secret_hash

log = logging.getLogger("regproxy.authn.robots")

FLUSH_INTERVAL = 30.0  # seconds between writes of the last-used file (never on a request)
_DENIED = AuthResult(Outcome.WRONG_PASSWORD, reason="invalid username or password")
_MISNAMED = AuthResult(Outcome.WRONG_PASSWORD, reason="a robot logs in as robot$NAME")


class RobotUsage:
    """When each robot was last used by this process, until written out."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def touch(self, name: str, now: float) -> None:
        self._seen[name] = now

    def flush(self, path: Path) -> None:
        """Merge what this process saw into `path` (blocking: call it off the event loop). A
        file that cannot be written is logged; what was seen is kept for the next try."""
        seen, self._seen = self._seen, {}
        if not seen:
            return
        try:
            with _locked(path, fcntl.LOCK_EX) as handle:
                merged = _read(handle)
                for name, moment in seen.items():
                    merged[name] = max(moment, merged.get(name, 0.0))
                handle.seek(0)
                handle.truncate()
                json.dump({n: timestamp(m) for n, m in sorted(merged.items())}, handle)
                handle.write("\n")
        except OSError as exc:
            log.warning("cannot record robot use in %s: %s", path, exc)
            for name, moment in seen.items():
                self._seen[name] = max(moment, self._seen.get(name, 0.0))


def read_usage(path: Path) -> dict[str, float]:
    """What the workers recorded: robot name -> when last used (epoch seconds)."""
    try:
        with _locked(path, fcntl.LOCK_SH, create=False) as handle:
            return _read(handle)
    except FileNotFoundError:
        return {}


@contextlib.contextmanager
def _locked(path: Path, mode: int, create: bool = True) -> Iterator[TextIO]:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o640)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(fd, mode)
        yield handle


def _read(handle: TextIO) -> dict[str, float]:
    try:
        data = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for name, value in data.items():
            with contextlib.suppress(TypeError, ValueError):
                moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
                out[str(name)] = moment.timestamp()
    return out


def grant(robot: Robot, users: UserFiles, now: float) -> RobotGrant | str:
    """What a robot whose secret was right may do now, or why it may do nothing: expired, or
    its owner is no longer a user of the htpasswd file. Pure."""
    if expired(robot, now):
        return f"robot expired at {timestamp(robot.expires)}"
    if robot.owner is not None and robot.owner not in users.htpasswd.users:
        return f"the robot's owner {robot.owner!r} is not a user any more"
    principal = robot.owner or robot.user
    groups = users.groups_of(principal)
    return RobotGrant(robot.name, robot.owner, principal, groups, robot.repositories, robot.actions)


class RobotAuthenticator:
    """The robots of one snapshot (`proxy.authn.Authenticator`)."""

    def __init__(
        self,
        robots: Mapping[str, Robot],
        key: bytes,
        users: UserFiles,
        usage: RobotUsage,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._robots = robots
        self._key = key
        self._users = users
        self._usage = usage
        self._wall = wall

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        if not user.startswith(USER_PREFIX):
            if password.startswith(SECRET_PREFIX):  # a robot's secret under another name:
                return _MISNAMED  # never handed to a password backend (an LDAP server)
            return AuthResult(Outcome.NO_SUCH_USER)
        robot = self._robots.get(user[len(USER_PREFIX) :])
        offered = secret_hash(self._key, password)
        if robot is None or not hmac.compare_digest(offered, robot.secret_hash):
            return _DENIED
        now = self._wall()
        granted = grant(robot, self._users, now)
        if isinstance(granted, str):
            log.info("robot %s refused: %s", robot.name, granted)
            return AuthResult(Outcome.WRONG_PASSWORD, reason=granted)
        self._usage.touch(robot.name, now)
        return AuthResult(Outcome.OK, robot=granted, expires=robot.expires)

    def close(self) -> None:
        """Nothing of its own."""
