"""Command line: flags -> Config, and exit codes. The only place that exits.

regproxy serve   [-c FILE] [--listen HOST:PORT] [--upstream URL] [--htpasswd FILE]
                 [--groups FILE] [--tls-cert FILE] [--tls-key FILE] [--workers N]
                 [--log-level LEVEL] [--acl FILE]
regproxy check   [-c FILE] [serve's flags]       like `nginx -t`
regproxy explain [-c FILE] USER ACTION REPOSITORY [--client IP]
regproxy import  FILE [-o OUT]                   httpd.conf / nginx.conf -> regproxy YAML
regproxy passwd  FILE USER [--stdin] [--delete] [--verify] [--cost N]
regproxy passwd  --redis URL | --store [-c FILE]  USER [...] [--groups G] [--upstream URL]
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import DEFAULT_CONFIG_PATH, FLAG_KEYS, LOG_LEVELS
from .credentials import PasswordHash, edit_htpasswd, hash_password, parse_htpasswd
from .identity import Identity
from .logsetup import configure_logging
from .policy import decide
from .problems import ConfigError, read_text
from .routes import ACTIONS, valid_name
from .snapshot import load_snapshot
from .supervisor import bind, serve

log = logging.getLogger("regproxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regproxy", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"regproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    _add_serve_flags(serve)
    check = commands.add_parser(
        "check", help="validate the configuration (the same flags as serve) and exit"
    )
    _add_serve_flags(check)

    explain = commands.add_parser(
        "explain", help="dry-run the ACL: which rule decides USER ACTION REPOSITORY"
    )
    _add_config_flag(explain)
    explain.add_argument("user", help="user name, or - for a request without credentials")
    explain.add_argument("action", choices=ACTIONS)
    explain.add_argument("repository")
    explain.add_argument("--client", metavar="IP", help="client address, for network rules")

    convert = commands.add_parser(
        "import", help="translate an Apache httpd.conf or nginx config into regproxy YAML"
    )
    convert.add_argument("file", type=Path, help="httpd.conf or nginx.conf written like the recipe")
    convert.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")

    passwd = commands.add_parser(
        "passwd",
        help="add, change, delete or verify a user",
        usage="regproxy passwd [options] FILE USER | --redis URL USER | --store [-c FILE] USER",
    )
    passwd.add_argument("names", nargs="+", metavar="FILE USER", help="htpasswd file and user")
    passwd.add_argument("--stdin", action="store_true", help="read the password from stdin")
    mode = passwd.add_mutually_exclusive_group()
    mode.add_argument("--delete", action="store_true")
    mode.add_argument("--verify", action="store_true")
    passwd.add_argument("--cost", type=int, default=10, help="bcrypt cost (default 10)")
    where = passwd.add_mutually_exclusive_group()
    where.add_argument("--redis", metavar="URL", help="the user in Redis at URL, not a file")
    where.add_argument(
        "--store", action="store_true", help="the user in the Redis of the config's state:"
    )
    _add_config_flag(passwd)
    passwd.add_argument("--key-prefix", default="regproxy:", help="with --redis (regproxy:)")
    passwd.add_argument("--groups", help="Redis: the user's groups (space separated; '' none)")
    passwd.add_argument("--upstream", metavar="URL", help="Redis: the user's registry ('' none)")
    return parser


def _add_serve_flags(command: argparse.ArgumentParser) -> None:
    _add_config_flag(command)
    command.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:5043")
    command.add_argument("--upstream", metavar="URL", help="default http://127.0.0.1:5000")
    command.add_argument("--htpasswd", metavar="FILE", help="default conf/htpasswd")
    command.add_argument("--groups", metavar="FILE", help="default conf/groups")
    command.add_argument("--tls-cert", metavar="FILE", help="default certs/server.crt")
    command.add_argument("--tls-key", metavar="FILE", help="default certs/server.key")
    command.add_argument("--workers", metavar="N", type=int, help="processes sharing the port")
    command.add_argument("--log-level", choices=LOG_LEVELS)
    command.add_argument("--acl", metavar="FILE", help="ACL rules (default: the recipe's policy)")


def _add_config_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"YAML config (default {DEFAULT_CONFIG_PATH} if it exists)",
    )


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag, None) is not None
    }


def _check(args: argparse.Namespace) -> int:
    """Every problem at once: config keys, htpasswd/group lines, the TLS pair, the token key."""
    try:
        _, problems = load_snapshot(_config_path(args), _overrides(args))
    except ConfigError as exc:
        problems = exc.problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"configuration has {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("configuration ok")
    return 0


def _explain(args: argparse.Namespace) -> int:
    """Print the decision and the rule (file:line) that made it; exit 0 allow, 3 deny."""
    try:
        snapshot, _ = load_snapshot(_config_path(args), {}, tls=False)
        address = ipaddress.ip_address(args.client) if args.client else None
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"--client: {exc}", file=sys.stderr)
        return 2
    if not valid_name(args.repository):
        print(f"{args.repository!r} is not a valid repository name", file=sys.stderr)
        return 2
    user = None if args.user == "-" else args.user
    groups = snapshot.users.groups_of(user) if user else frozenset()
    who = Identity(user, groups, address)
    decision = decide(snapshot.rules, who, args.action, args.repository)
    verdict = "ALLOW" if decision.allowed else "DENY"
    print(f"{verdict} {args.user} {args.action} {args.repository}")
    print(f"  decided by: {decision.reason}")
    if decision.allowed:
        print(f"  upstream: {decision.upstream or snapshot.config.upstream}")
    print(f"  groups: {', '.join(sorted(groups)) or '(none)'}")
    if user and user not in snapshot.users.htpasswd.users:
        print(f"  note: {user!r} is not in {snapshot.config.htpasswd}")
    return 0 if decision.allowed else 3


def _serve(args: argparse.Namespace) -> int:
    try:
        snapshot, problems = load_snapshot(_config_path(args), _overrides(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    config = snapshot.config
    configure_logging(config.log_level, config.access_log_path, config.audit_log)
    for problem in problems:
        log.warning("%s (line ignored)", problem)
    try:
        sock = bind(config)
    except OSError as exc:
        print(f"cannot listen on {config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return serve(snapshot, sock, _config_path(args), _overrides(args))


def _import(args: argparse.Namespace) -> int:
    """Write the YAML; say on stderr, as file:line, what could not be translated."""
    from .importer import import_config

    try:
        imported = import_config(read_text(args.file), str(args.file))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    for note in imported.notes:
        print(f"not translated: {note}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(imported.yaml_text)
    else:
        _atomic_write(args.output, imported.yaml_text)
        print(f"wrote {args.output}; check it with: regproxy check -c {args.output}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    redis = args.redis is not None or args.store
    if len(args.names) != (1 if redis else 2):
        wanted = "USER (with --redis or --store)" if redis else "FILE USER"
        print(f"regproxy passwd: expected {wanted}", file=sys.stderr)
        return 2
    if redis:
        from .redis_passwd import redis_passwd

        return redis_passwd(args, _config_path(args), _read_password)
    if args.groups is not None or args.upstream is not None:
        print("--groups and --upstream are for users in Redis", file=sys.stderr)
        return 2
    path, args.user = Path(args.names[0]), args.names[1]
    try:
        text = read_text(path) if path.exists() else ""
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.delete:
        new_text, found = edit_htpasswd(text, args.user, None)
        if not found:
            print(f"user {args.user!r} not found in {path}", file=sys.stderr)
            return 1
        _atomic_write(path, new_text)
        print(f"deleted user {args.user}")
        return 0
    password = _read_password(args.stdin, confirm=not args.verify)
    if password is None:
        return 1
    if args.verify:
        stored = _find_hash(text, args.user)
        ok = stored is not None and stored.verify(password.encode())
        print("password correct" if ok else "password verification failed")
        return 0 if ok else 3
    try:
        new_text, found = edit_htpasswd(text, args.user, hash_password(password, args.cost))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    _atomic_write(path, new_text)
    print(f"{'updated' if found else 'added'} user {args.user}")
    return 0


def _find_hash(text: str, user: str) -> PasswordHash | None:
    return parse_htpasswd(text, "htpasswd").users.get(user)


def _read_password(from_stdin: bool, confirm: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Re-type password: ") != password:
        print("passwords do not match", file=sys.stderr)
        return None
    return password


def _atomic_write(path: Path, text: str) -> None:
    """Write-then-rename in the same directory: readers see the old file or the new one."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o640
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "serve": _serve,
        "check": _check,
        "explain": _explain,
        "import": _import,
        "passwd": _passwd,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
