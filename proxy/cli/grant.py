"""`regproxy grant USER ... | list | revoke`: break-glass grants, kept in the grants file (edited
by `proxy.cli.listfile`)."""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from ..authn.credentials import parse_htpasswd
from ..conf.config import Config
from ..core.moments import describe_duration, parse_duration, timestamp
from ..core.problems import ConfigError, read_text
from ..core.yamllist import entry_spans
from ..http.routes import ACTIONS, Action
from ..policy.acl import fixed_globs
from ..policy.grantfile import entry_text, load_grants, user_problem
from ..policy.grants import Grant
from .listfile import aligned, append, remove
from .parser import add_config_flag, command, on_config

HEADER = (
    "# regproxy break-glass grants: written by `regproxy grant`, fine to edit by hand.\n"
    "# Each is in force from `granted` until `expires`; see the README, Break-glass grants.\n"
)
USAGE = """regproxy grant USER --actions pull,push[,delete] --repositories GLOB [GLOB ...]
                      --for DURATION --reason TEXT [--by NAME] [-c FILE]
       regproxy grant list [-c FILE]
       regproxy grant revoke ID|USER [-c FILE]"""
_NEEDED = {"actions": "--actions", "repositories": "--repositories", "duration": "--for",
           "reason": "--reason"}  # fmt: skip


NAME = "grant"


def add_parser(commands: Any) -> None:
    """`regproxy grant USER ... | list | revoke ID|USER` and their options."""
    grant = command(
        commands,
        NAME,
        "give a user rights they lack, for a while (break-glass)",
        "`grant USER` gives USER the --actions on the --repositories that the ACL refuses\n"
        "them, from now --for DURATION (at most grants.max_duration), and says why\n"
        "(--reason). Every request it allows is audited with the grant. It applies on every\n"
        "worker reading the grants file within a second and ends on the clock. `list` shows\n"
        "the grants, `revoke` removes one by id, or every grant of a user. Needs `grants:\n"
        "{file: ...}` in the config.",
        "  0    done\n  1    the config has no grants file, a file problem, or nothing to revoke",
    )
    grant.usage = USAGE
    grant.add_argument("target", metavar="USER|list|revoke", help="whom to grant, or a command")
    grant.add_argument(
        "name", nargs="?", metavar="ID|USER", help="revoke: a grant's id, or every grant of a user"
    )
    grant.add_argument("--actions", help="pull,push[,delete]: what the user may do besides")
    grant.add_argument("--repositories", nargs="+", metavar="GLOB", help="repository globs")
    grant.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="90s, 30m, 8h, 2d: at most grants.max_duration",
    )
    grant.add_argument("--reason", help="why (written to the audit log with every use)")
    grant.add_argument(
        "--by", metavar="NAME", help="who grants it (default: $SUDO_USER, else your login name)"
    )
    add_config_flag(grant)


def _run(args: argparse.Namespace, config: Config) -> int:
    path = config.grants.file
    if path is None:
        print("the config has no grants file: add grants: {file: grants.yaml}", file=sys.stderr)
        return 1
    wrong = _wrong_command_line(args)
    if wrong is not None:
        print(f"usage: {USAGE}\nregproxy grant: {wrong}", file=sys.stderr)
        return 2
    try:
        if args.target == "list":
            return _list(config)
        if args.target == "revoke":
            return _revoke(path, args.name)
        return _create(args, config, path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


run = on_config(_run)


def _wrong_command_line(args: argparse.Namespace) -> str | None:
    """What the command line lacks or has too much of, for the form it takes."""
    given = [key for key in (*_NEEDED, "by") if getattr(args, key) is not None]
    if args.target == "list" and (given or args.name is not None):
        return "list takes no other arguments"
    if args.target == "revoke" and (given or args.name is None):
        return "revoke takes one ID or USER, and no options"
    if args.target in ("list", "revoke"):
        return None
    if args.name is not None:
        return f"one USER at a time, got {args.target!r} and {args.name!r}"
    missing = [flag for key, flag in _NEEDED.items() if key not in given]
    return f"missing {', '.join(missing)}" if missing else None


def _actions(text: str) -> frozenset[Action] | None:
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names or any(a not in ACTIONS for a in names):
        return None
    return frozenset(a for a in ACTIONS if a in names)


def _problem(args: argparse.Namespace, config: Config) -> str | None:
    """What is wrong with the command line of `grant USER`, or None."""
    problem = user_problem(args.target)
    if problem is not None:
        return f"USER: {problem}"
    if not args.reason.strip() or not args.reason.isprintable():
        return "--reason: one line of text, saying why"
    if args.by is not None and (not args.by.strip() or not args.by.isprintable()):
        return "--by: one line of text, naming who grants it"
    try:
        fixed_globs(args.repositories, "--repositories")
    except ValueError as exc:
        return str(exc)
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        return f"--for: {exc}"
    if _actions(args.actions) is None:
        return f"--actions: expected pull, push, delete separated by commas, got {args.actions!r}"
    if seconds > config.grants.max_duration:
        longest = describe_duration(config.grants.max_duration)
        return f"--for: at most grants.max_duration ({longest}), got {args.duration}"
    return _unknown_user(config, args.target)


def _unknown_user(config: Config, user: str) -> str | None:
    """With users known only from the htpasswd file: a user that is not in it."""
    if config.auth_backends != ("htpasswd",) or config.oidc is not None:
        return None  # LDAP, Redis or token identities: not all knowable from here
    users = parse_htpasswd(read_text(config.htpasswd), str(config.htpasswd)).users
    return None if user in users else f"USER: {user!r} is not a user of {config.htpasswd}"


def granted_by(by: str | None) -> str:
    """Who acts: `by` when given, else $SUDO_USER, else the login name."""
    if by is not None:
        return by.strip()
    try:
        login = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        login = f"uid {os.geteuid()}"
    return os.environ.get("SUDO_USER") or login


def _create(args: argparse.Namespace, config: Config, path: Path) -> int:
    problem = _problem(args, config)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    now = int(time.time())  # whole seconds: the file says them so
    actions = _actions(args.actions)
    assert actions is not None
    made: list[Grant] = []

    def entry(text: str) -> str:
        grant = Grant(
            _new_id(text, str(path)),
            args.target,
            actions,
            tuple(args.repositories),
            now,
            now + parse_duration(args.duration),
            args.reason.strip(),
            granted_by(args.by),
        )
        made.append(grant)
        return entry_text(grant)

    append(path, HEADER, entry)
    grant = made[0]
    verbs = ",".join(a for a in ACTIONS if a in grant.actions)
    print(
        f"grant {grant.id}: {grant.user} may {verbs} {' '.join(grant.repositories)}"
        f" until {timestamp(grant.expires)}"
    )
    return 0


def _new_id(text: str, source: str) -> str:
    """An id no entry of the file has."""
    while True:
        candidate = f"g-{secrets.token_hex(4)}"
        if not entry_spans(text, source, "id", (candidate,)):
            return candidate


def _list(config: Config) -> int:
    grants, problems = load_grants(config.grants)
    for problem in problems:
        print(problem, file=sys.stderr)
    now = time.time()
    rows = [("ID", "USER", "ACTIONS", "REPOSITORIES", "UNTIL", "STATE", "BY", "REASON")]
    for grant in grants:
        state = "in force" if grant.in_force(now) else "ended" if now >= grant.expires else "later"
        actions = ",".join(a for a in ACTIONS if a in grant.actions)
        repositories = " ".join(grant.repositories)
        until = timestamp(grant.expires)
        rows.append((grant.id, grant.user, actions, repositories, until, state,
                     grant.granted_by or "-", grant.reason))  # fmt: skip
    for line in aligned(rows):
        print(line)
    return 0


def _revoke(path: Path, name: str) -> int:
    if remove(path, "id", (name,)):
        print(f"revoked {name}")
        return 0
    count = remove(path, "user", (name,))
    if not count:
        print(f"no grant with id or user {name!r} in {path}", file=sys.stderr)
        return 1
    print(f"revoked every grant of {name} ({count})")
    return 0
