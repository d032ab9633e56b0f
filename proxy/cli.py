"""Command line: flags -> Config, and exit codes. The only place that exits.

regproxy serve   [-c FILE] [--listen HOST:PORT] [--upstream URL] [--htpasswd FILE]
                 [--groups FILE] [--tls-cert FILE] [--tls-key FILE] [--workers N]
                 [--log-level LEVEL] [--acl FILE]
regproxy check   [-c FILE] [serve's flags]       like `nginx -t`
regproxy explain [-c FILE] USER ACTION REPOSITORY [--client IP] [--claims FILE]
regproxy import  FILE [-o OUT]                   httpd.conf / nginx.conf -> regproxy YAML
regproxy passwd  FILE USER [--stdin] [--delete] [--verify] [--cost N]
regproxy robot   create NAME --repositories GLOB... --actions pull,push --expires 30d
                 [--owner USER] [--description TEXT] | list | revoke NAME   [-c FILE]
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import __version__, robot_commands
from . import config as config_module
from .addresses import IPAddress
from .authn.robots import grant as robot_grant
from .config import DEFAULT_CONFIG_PATH, FLAG_KEYS, LOG_LEVELS
from .credentials import PasswordHash, edit_htpasswd, hash_password, parse_htpasswd
from .identity import Identity
from .logsetup import configure_logging
from .policy import decide
from .problems import ConfigError, read_text, write_atomically
from .robots import USER_PREFIX
from .routes import ACTIONS, valid_name
from .snapshot import Snapshot, load_snapshot
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
    explain.add_argument(
        "--claims",
        type=Path,
        metavar="FILE",
        help="a workload token's claims (JSON or YAML): decide for the identity it would give",
    )

    convert = commands.add_parser(
        "import", help="translate an Apache httpd.conf or nginx config into regproxy YAML"
    )
    convert.add_argument("file", type=Path, help="httpd.conf or nginx.conf written like the recipe")
    convert.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")

    passwd = commands.add_parser("passwd", help="add, change, delete or verify a user")
    passwd.add_argument("file", type=Path)
    passwd.add_argument("user")
    passwd.add_argument("--stdin", action="store_true", help="read the password from stdin")
    mode = passwd.add_mutually_exclusive_group()
    mode.add_argument("--delete", action="store_true")
    mode.add_argument("--verify", action="store_true")
    passwd.add_argument("--cost", type=int, default=10, help="bcrypt cost (default 10)")

    robot_commands.add_parser(commands, _add_config_flag)
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
    who = _who(args, snapshot, address)
    if isinstance(who, str):
        print(f"REFUSED {args.user}: {who}")
        return 3
    decision = decide(snapshot.rules, who, args.action, args.repository)
    verdict = "ALLOW" if decision.allowed else "DENY"
    print(f"{verdict} {who.user or '-'} {args.action} {args.repository}")
    print(f"  decided by: {decision.reason}")
    if decision.allowed:
        print(f"  upstream: {decision.upstream or snapshot.config.upstream}")
    groups = who.robot.principal_groups if who.robot else who.groups
    print(f"  groups: {', '.join(sorted(groups)) or '(none)'}")
    if who.robot is not None:
        print(f"  robot {who.robot.name} acting as {who.robot.principal}")
    known = who.user in snapshot.users.htpasswd.users or who.claims or who.robot
    if who.user and not known:
        print(f"  note: {who.user!r} is not in {snapshot.config.htpasswd}")
    return 0 if decision.allowed else 3


def _who(args: argparse.Namespace, snapshot: Snapshot, address: IPAddress | None) -> Identity | str:
    """Who `explain` decides for: a user, a robot (by its `robot$NAME`: as if its secret were
    right), or the identity a token with these claims would give; or why there is none."""
    user = None if args.user == "-" else args.user
    if args.claims is not None:
        return _token_identity(args.claims, user, snapshot, address)
    if user is not None and user.startswith(USER_PREFIX) and snapshot.config.robots is not None:
        robot = snapshot.robots.get(user[len(USER_PREFIX) :])
        if robot is None:
            return f"no robot {user!r} in {snapshot.config.robots}"
        grant = robot_grant(robot, snapshot.users, time.time())
        if isinstance(grant, str):
            return grant
        return Identity(user, snapshot.users.groups_of(user), address, robot=grant)
    groups = snapshot.users.groups_of(user) if user else frozenset()
    return Identity(user, groups, address)


def _token_identity(
    path: Path, user: str | None, snapshot: Snapshot, address: IPAddress | None
) -> Identity | str:
    from .authn.oidc import identity_from
    from .authn.tokens import Rejected

    settings = snapshot.config.oidc
    if settings is None:
        return "the config has no oidc: section"
    try:
        claims = yaml.safe_load(read_text(path))
    except (ConfigError, yaml.YAMLError) as exc:
        return f"{path}: {exc}"
    if not isinstance(claims, dict):
        return f"{path}: expected a mapping of claims"
    issuer = settings.issuer(str(claims.get("iss")))
    if issuer is None:
        return f"token issuer {claims.get('iss')!r} not trusted"
    if settings.basic_user is not None and user != settings.basic_user:
        return f"tokens are accepted with the user name {settings.basic_user!r} only"
    try:
        name, groups = identity_from(issuer, claims)
    except Rejected as exc:
        return str(exc)
    return Identity(name, groups | snapshot.users.groups_of(name), address, claims)


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
        write_atomically(args.output, imported.yaml_text)
        print(f"wrote {args.output}; check it with: regproxy check -c {args.output}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    path: Path = args.file
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
        write_atomically(path, new_text)
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
    write_atomically(path, new_text)
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


def _robot(args: argparse.Namespace) -> int:
    try:
        config = config_module.load(_config_path(args), {})
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return robot_commands.run(args, config)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "serve": _serve,
        "check": _check,
        "explain": _explain,
        "import": _import,
        "passwd": _passwd,
        "robot": _robot,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
