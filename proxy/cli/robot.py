"""`regproxy robot create | list | revoke`: the robots file edited through the CLI
(`proxy.cli.listfile`)."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..authn.credentials import parse_htpasswd
from ..authn.robotfile import (
    MIN_SECRET,
    USER_PREFIX,
    Robot,
    derive,
    entry_text,
    expired,
    load_robots,
    new_secret,
    parse_expiry,
    read_secret_file,
    secret_hash,
    usage_path,
)
from ..authn.robots import read_usage
from ..conf.config import Config
from ..core.moments import timestamp
from ..core.problems import ConfigError, read_text, write_atomically
from ..core.values import IDENTIFIER_RE
from ..core.yamllist import entry_spans
from ..http.routes import ACTIONS, Action
from ..policy.acl import glob_problem
from .listfile import Refused, aligned, append, remove
from .parser import add_config_flag, command, on_config

HEADER = (
    "# regproxy robot accounts: written by `regproxy robot`, fine to edit by hand.\n"
    "# Secrets are stored as keyed hashes only; see the README, CI and robot identities.\n"
)


NAME = "robot"


def add_parser(commands: Any) -> None:
    """`regproxy robot create | list | revoke` and their options."""
    robot = command(
        commands,
        NAME,
        "create, list or revoke robot accounts (CI credentials)",
        "Robots are machine accounts for CI: `create` prints a secret once (the robots file\n"
        "keeps only a keyed hash of it), scoped to repository globs and actions, expiring,\n"
        "and never allowed more than its owner; `list` shows them with their last use;\n"
        "`revoke` deletes one (refused everywhere within a second). Needs `robots:` and\n"
        "`secret_file:` in the config.",
        "  0    done\n  1    the config has no robots file, or a file problem",
    )
    actions = robot.add_subparsers(
        dest="robot_command", required=True, metavar="ACTION", help="create, list or revoke"
    )
    exits = "exit codes:\n  0    done\n  1    the config has no robots file, or a file problem"
    exits += "\n  2    the command line is wrong"

    def action(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name,
            help=summary,
            description=description,
            epilog=exits,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    create = action(
        "create",
        "make a robot and print its secret (once)",
        "Make robot NAME, limited to the repository globs and actions given and to its owner's\n"
        "rights, expiring after --expires. Its secret is printed once; the robots file keeps a\n"
        "keyed hash of it. It logs in as robot$NAME with the secret as the password.",
    )
    create.add_argument("name", metavar="NAME", help="the robot's name (it logs in as robot$NAME)")
    create.add_argument(
        "--repositories", nargs="+", required=True, metavar="GLOB", help="repository globs"
    )
    create.add_argument("--actions", required=True, help="pull,push[,delete]")
    create.add_argument("--expires", required=True, help="30d, 12h, 2w or an ISO date")
    create.add_argument("--owner", help="whose rights bound the robot's (an htpasswd user)")
    create.add_argument("--description", default="", help="what the robot is for")
    listing = action(
        "list",
        "name, owner, scopes, expiry, last use",
        "Every robot: name, owner, scopes, expiry and when it was last used.",
    )
    revoke = action(
        "revoke",
        "delete a robot: refused within a second",
        "Delete robot NAME from the robots file: every worker refuses it within a second.",
    )
    revoke.add_argument("name", metavar="NAME", help="the robot to delete")
    for action_parser in (create, listing, revoke):
        add_config_flag(action_parser)


def _run(args: argparse.Namespace, config: Config) -> int:
    if config.robots is None or config.secret_file is None:
        print("the config has no robots: file (and secret_file:); add them", file=sys.stderr)
        return 1
    command = {"create": _create, "list": _list, "revoke": _revoke}[args.robot_command]
    try:
        return command(args, config, config.robots)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


run = on_config(_run)


def _secret(config: Config) -> bytes:
    """The server's secret; made (random, mode 0600) when the file does not exist yet."""
    path = config.secret_file
    assert path is not None
    if not path.exists():
        write_atomically(path, secrets.token_urlsafe(MIN_SECRET + 16) + "\n", mode=0o600)
        print(f"made a new server secret in {path} (keep it private)", file=sys.stderr)
    return read_secret_file(path)


def _actions(text: str) -> frozenset[Action] | None:
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names or any(a not in ACTIONS for a in names):
        return None
    return frozenset(a for a in ACTIONS if a in names)


def _problem(args: argparse.Namespace, config: Config, now: float) -> str | None:
    if not IDENTIFIER_RE.fullmatch(args.name):
        return f"robot name {args.name!r}: [a-z0-9], then [a-z0-9._-], 64 at most"
    for glob in args.repositories:
        problem = glob_problem(glob)
        if problem or "${" in glob:
            return f"--repositories: {problem or 'no ${user} or ${group} in a robot scope'}"
    if _actions(args.actions) is None:
        return f"--actions: expected pull, push, delete separated by commas, got {args.actions!r}"
    try:
        if parse_expiry(args.expires, now) <= now:
            return "--expires: the expiry is in the past"
    except ValueError as exc:
        return f"--expires: {exc}"
    if args.owner is not None and "htpasswd" in config.auth_backends:
        users = parse_htpasswd(read_text(config.htpasswd), str(config.htpasswd)).users
        if args.owner not in users:
            return f"--owner: {args.owner!r} is not a user of {config.htpasswd}"
    return None


def _create(args: argparse.Namespace, config: Config, robots: Path) -> int:
    now = time.time()
    problem = _problem(args, config, now)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    key = derive(_secret(config), "robots")
    secret = new_secret()
    actions = _actions(args.actions)
    assert actions is not None
    robot = Robot(
        args.name,
        secret_hash(key, secret),
        tuple(args.repositories),
        actions,
        parse_expiry(args.expires, now),
        args.owner,
        args.description,
        timestamp(now),
    )

    def entry(text: str) -> str:
        if _named(text, robots, args.name):
            raise Refused(f"a robot named {args.name!r} exists: revoke it first")
        return entry_text(robot)

    try:
        append(robots, HEADER, entry)
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    print(secret)
    print(
        f"robot {args.name} created, expires {timestamp(robot.expires)}: log in as "
        f"'{USER_PREFIX}{args.name}' with the secret above; it is not shown again",
        file=sys.stderr,
    )
    return 0


def _named(text: str, robots: Path, name: str) -> bool:
    """Whether an entry of the file, usable or not, has this name."""
    return bool(entry_spans(text, str(robots), "name", (name,)))


def _list(args: argparse.Namespace, config: Config, robots: Path) -> int:
    book, problems = load_robots(robots)
    for problem in problems:
        print(problem, file=sys.stderr)
    for line in describe(book, read_usage(usage_path(robots)), time.time()):
        print(line)
    return 0


def describe(robots: Mapping[str, Robot], used: Mapping[str, float], now: float) -> list[str]:
    """`regproxy robot list`: one line per robot."""
    rows = [("NAME", "OWNER", "ACTIONS", "REPOSITORIES", "EXPIRES", "LAST USED")]
    for robot in sorted(robots.values(), key=lambda r: r.name):
        expires = timestamp(robot.expires) + (" (expired)" if expired(robot, now) else "")
        last = timestamp(used[robot.name]) if robot.name in used else "never"
        actions = ",".join(a for a in ACTIONS if a in robot.actions)
        rows.append(
            (robot.name, robot.owner or "-", actions, " ".join(robot.repositories), expires, last)
        )
    return aligned(rows)


def _revoke(args: argparse.Namespace, config: Config, robots: Path) -> int:
    if not remove(robots, "name", (args.name,)):
        print(f"no robot named {args.name!r} in {robots}", file=sys.stderr)
        return 1
    print(f"robot {args.name} revoked")
    return 0
