"""`regproxy passwd`: add, change, delete or verify a user in an htpasswd file (or in Redis,
`proxy.cli.redis_passwd`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..authn.credentials import PasswordHash, edit_htpasswd, hash_password, parse_htpasswd
from ..core.problems import ConfigError, read_text
from ..http.routes import valid_component
from .askpass import ask_password
from .listfile import write
from .parser import add_config_flag, command, config_path

NAME = "passwd"


def add_parser(commands: Any) -> None:
    passwd = command(
        commands,
        NAME,
        "add, change, delete or verify a user in an htpasswd file",
        "Write a bcrypt hash ($2y$, as `htpasswd -B` does) for USER, asking for the password\n"
        "twice (or reading one line with --stdin). The file is replaced in one rename, so a\n"
        "running proxy never reads half of it. Empty passwords are refused, and so are new\n"
        'user names an ACL rule like "${user}/**" cannot use (they must be valid repository\n'
        "path components: lower-case letters, digits, and . _ - between them).\n"
        "With --redis URL (or --store: the config's state: section) the user is kept in\n"
        "Redis for the redis auth backend, with --groups and --upstream, and every replica\n"
        "sees the change within a second.",
        "  0    done (--verify: the password is right)\n"
        "  1    a file problem, an empty password, a refused name, or USER not found\n"
        "  3    --verify: wrong password",
    )
    passwd.usage = "regproxy passwd [options] FILE USER | --redis URL USER | --store [-c FILE] USER"
    passwd.add_argument(
        "names", nargs="+", metavar="FILE USER", help="htpasswd file (made if missing) and user"
    )
    passwd.add_argument(
        "--stdin", action="store_true", help="read the password from one line of standard input"
    )
    mode = passwd.add_mutually_exclusive_group()
    mode.add_argument("--delete", action="store_true", help="remove USER")
    mode.add_argument(
        "--verify", action="store_true", help="check USER's password (exit 3 if wrong)"
    )
    passwd.add_argument(
        "--cost", type=int, default=10, metavar="N", help="bcrypt cost, 4-17 (default 10)"
    )
    where = passwd.add_mutually_exclusive_group()
    where.add_argument("--redis", metavar="URL", help="the user in Redis at URL, not a file")
    where.add_argument(
        "--store", action="store_true", help="the user in the Redis of the config's state:"
    )
    add_config_flag(passwd)
    passwd.add_argument("--key-prefix", default="regproxy:", help="with --redis (regproxy:)")
    passwd.add_argument("--groups", help="Redis: the user's groups (space separated; '' none)")
    passwd.add_argument("--upstream", metavar="URL", help="Redis: the user's registry ('' none)")


def run(args: argparse.Namespace) -> int:
    redis = args.redis is not None or args.store
    if len(args.names) != (1 if redis else 2):
        wanted = "USER (with --redis or --store)" if redis else "FILE USER"
        print(f"regproxy passwd: expected {wanted}", file=sys.stderr)
        return 2
    if not 4 <= args.cost <= 17:
        print(f"--cost {args.cost}: bcrypt cost must be 4-17 (htpasswd -C)", file=sys.stderr)
        return 2
    if redis:
        from .redis_passwd import redis_passwd

        return redis_passwd(args, config_path(args), _read_password)
    if args.groups is not None or args.upstream is not None:
        print("--groups and --upstream are for users in Redis", file=sys.stderr)
        return 2
    path, args.user = Path(args.names[0]), args.names[1]
    try:
        text = read_text(path) if path.exists() or path.is_symlink() else ""
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    stored = _find_hash(text, args.user)
    if stored is None and (args.delete or args.verify):
        print(f"{path}: user {args.user!r} not found", file=sys.stderr)
        return 1
    if stored is None and (refused := _unusable_name(args.user)):
        print(f"user name {args.user!r} refused: {refused}", file=sys.stderr)
        return 1
    if args.delete:
        return _save(path, edit_htpasswd(text, args.user, None)[0], f"deleted user {args.user}")
    password = _read_password(args.stdin, confirm=not args.verify)
    if password is None:
        return 1
    if stored is not None and args.verify:
        ok = stored.verify(password.encode())
        print("password correct" if ok else "password verification failed")
        return 0 if ok else 3
    new_text, found = edit_htpasswd(text, args.user, hash_password(password, args.cost))
    return _save(path, new_text, f"{'updated' if found else 'added'} user {args.user}")


def _save(path: Path, text: str, done: str) -> int:
    if not write(path, text):
        return 1
    print(done)
    return 0


def _unusable_name(user: str) -> str | None:
    """Why a new user name would be unsafe or useless in ACL rules, if it would be."""
    # `${user}` stands for one repository path component: `a/b` would reach into user a's
    # namespace, and names with capitals or wildcards never match a repository.
    if valid_component(user):
        return None
    return (
        'ACL rules like "${user}/**" use it as a repository path component: lower-case '
        "letters and digits, separated by '.', '_', '__' or dashes"
    )


def _find_hash(text: str, user: str) -> PasswordHash | None:
    return parse_htpasswd(text, "htpasswd").users.get(user)


def _read_password(from_stdin: bool, confirm: bool) -> str | None:
    """The password, or None after saying why there is none (end of input, empty, typos)."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            print("no password: standard input is empty", file=sys.stderr)
            return None
        password = line.rstrip("\r\n")
    else:
        try:
            password = ask_password("Password: ")
            if confirm and password and ask_password("Re-type password: ") != password:
                print("passwords do not match", file=sys.stderr)
                return None
        except EOFError:
            print("\nno password: end of input", file=sys.stderr)
            return None
    if not password:
        print("empty password refused", file=sys.stderr)
        return None
    return password
