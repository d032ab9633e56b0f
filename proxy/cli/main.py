"""Command line: flags -> Config, exit codes, and messages written for people. The only place
that exits. A user's mistake (a missing, unreadable or misplaced file, Ctrl-C or end of input
at a prompt, an empty password) ends in a message that names the file, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..authn.credentials import (
    PasswordHash,
    edit_htpasswd,
    hash_password,
    parse_htpasswd,
    placeholder_notes,
)
from ..authn.htpasswd import UserFiles
from ..authn.robotfile import USER_PREFIX, load_robots
from ..authn.robots import grant as robot_grant
from ..conf import config as config_module
from ..conf.config import DEFAULT_CONFIG_PATH, FLAG_KEYS, LOG_LEVELS, Config
from ..conf.snapshot import load_users, preflight
from ..core.addresses import IPAddress, ip_address
from ..core.limits import raise_open_files_limit
from ..core.moments import parse_moment, timestamp
from ..core.problems import ConfigError, Problem, read_text, write_atomically
from ..http.routes import ACTIONS, TAG_RE, Action, Operation, valid_component, valid_name
from ..observe.logsetup import configure_logging
from ..policy.acl import TAG_SECTIONS
from ..policy.grantfile import load_grants
from ..policy.grants import Grant
from ..policy.identity import Identity
from ..policy.rules import Decision, decide
from ..policy.tagrules import Denied, Overwrite, Pointers, TagRule, plan
from ..serve.supervisor import become_supervisor
from ..serve.worker import bind, run_worker
from . import grant as grant_commands
from . import quarantine as quarantine_commands
from . import robot as robot_commands
from .askpass import ask_password

log = logging.getLogger("regproxy")

DESCRIPTION = """\
regproxy: an authenticating TLS proxy in front of a Docker/OCI registry. It serves HTTPS,
checks HTTP Basic credentials against an Apache htpasswd file and group file (or LDAP),
decides every request by the ACL rules (or the Apache recipe's policy: group pusher may
push and delete, every valid user may pull) and streams /v2 to the registry."""
EPILOG = """\
The configuration is conf/regproxy.yaml when it exists (-c FILE for another); flags
override it. `regproxy COMMAND --help` describes each command; README.md has the rest.

exit codes:
  0    done (check: configuration ok; explain: allowed)
  1    a problem with the configuration or a file, printed as FILE:LINE: message
  2    the command line is wrong
  3    explain: denied; passwd --verify: wrong password
  130  interrupted (Ctrl-C)"""

_COMMANDS = {  # name: (one-line help, description, exit codes)
    "serve": (
        "run the proxy in the foreground",
        "Serve HTTPS on --listen and forward /v2 to --upstream. Edits to the config, htpasswd,\n"
        "groups, ACL and TLS files apply within a second (a broken edit keeps the last good\n"
        "version and logs why). SIGHUP reloads now, SIGUSR1 reopens the log files,\n"
        "SIGTERM or Ctrl-C lets requests in flight finish, then stops.",
        "  0    stopped by SIGTERM or SIGINT\n"
        "  1    the configuration, a file or the listening address cannot be used",
    ),
    "check": (
        "check the configuration like `nginx -t` (serve's flags)",
        "Load everything serve would load: the config, the ACL, htpasswd and group files,\n"
        "the robots and grants files, the LDAP and token sections, the certificate and key.\n"
        "Print `configuration ok`, or every problem as FILE:LINE: message (in a checkout,\n"
        "with the files `make run` would create).",
        "  0    configuration ok\n  1    problems, each printed",
    ),
    "explain": (
        "which rule allows or denies USER ACTION REPOSITORY",
        "Dry-run the ACL: print ALLOW or DENY, the rule that decided (FILE:LINE), the\n"
        "upstream the request would go to and the user's groups. --acl tries a rules file\n"
        "before putting it in the config. --tag: a manifest request by that tag (tag rules,\n"
        "immutable tags, protected deletes); without it, by digest (or a blob). A\n"
        "break-glass grant that decides is named, with what the ACL alone would say; --at\n"
        "decides at another moment (grants in force then).",
        "  0    allowed\n  3    denied\n  1    the configuration cannot be loaded",
    ),
    "import": (
        "translate an Apache httpd.conf or nginx config into regproxy YAML",
        "Translate a httpd.conf or nginx server block written like the Docker recipes\n"
        "(Listen, SSLCertificateFile, AuthUserFile, AuthGroupFile, <Limit>, ProxyPass; or\n"
        "listen, ssl_certificate, auth_basic_user_file, limit_except, proxy_pass). What was\n"
        "translated with a difference, and what was not translated, is listed on standard\n"
        "error as `translated:` and `not translated:` FILE:LINE notes.",
        "  0    written\n  1    FILE cannot be read or is no such config, or OUT exists (--force)",
    ),
    "passwd": (
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
    ),
    "grant": (
        "give a user rights they lack, for a while (break-glass)",
        "`grant USER` gives USER the --actions on the --repositories that the ACL refuses\n"
        "them, from now --for DURATION (at most grants.max_duration), and says why\n"
        "(--reason). Every request it allows is audited with the grant. It applies on every\n"
        "worker reading the grants file within a second and ends on the clock. `list` shows\n"
        "the grants, `revoke` removes one by id, or every grant of a user. Needs `grants:\n"
        "{file: ...}` in the config.",
        "  0    done\n  1    the config has no grants file, a file problem, or nothing to revoke",
    ),
    "quarantine": quarantine_commands.HELP,
    "robot": (
        "create, list or revoke robot accounts (CI credentials)",
        "Robots are machine accounts for CI: `create` prints a secret once (the robots file\n"
        "keeps only a keyed hash of it), scoped to repository globs and actions, expiring,\n"
        "and never allowed more than its owner; `list` shows them with their last use;\n"
        "`revoke` deletes one (refused everywhere within a second). Needs `robots:` and\n"
        "`secret_file:` in the config.",
        "  0    done\n  1    the config has no robots file, or a file problem",
    ),
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks; option help is wrapped."""


def _command(commands: Any, name: str) -> argparse.ArgumentParser:
    summary, description, exits = _COMMANDS[name]
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=description,
        epilog=f"exit codes:\n{exits}\n  2    the command line is wrong\n  130  interrupted",
        formatter_class=_Formatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regproxy", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"regproxy {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    _add_serve_flags(_command(commands, "serve"))
    _add_serve_flags(_command(commands, "check"))

    explain = _command(commands, "explain")
    _add_config_flag(explain)
    _add_user_file_flags(explain)
    explain.add_argument(
        "user", metavar="USER", help="user name, or - for a request without credentials"
    )
    explain.add_argument("action", choices=ACTIONS, metavar="ACTION", help="pull, push or delete")
    explain.add_argument(
        "repository", metavar="REPOSITORY", help="repository name, e.g. library/ubuntu"
    )
    explain.add_argument("--client", metavar="IP", help="client address, for rules with networks")
    explain.add_argument("--tag", metavar="TAG", help="a manifest request by this tag")
    explain.add_argument(
        "--at", metavar="TIME", help="decide at this ISO 8601 time (grants in force then)"
    )
    explain.add_argument(
        "--claims",
        type=Path,
        metavar="FILE",
        help="a workload token's claims (JSON or YAML): decide for the identity it would give",
    )

    convert = _command(commands, "import")
    convert.add_argument(
        "file", type=Path, metavar="FILE", help="the httpd.conf or nginx config to translate"
    )
    convert.add_argument(
        "-o", "--output", type=Path, metavar="OUT", help="write here (default: stdout)"
    )
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")

    passwd = _command(commands, "passwd")
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
    _add_config_flag(passwd)
    passwd.add_argument("--key-prefix", default="regproxy:", help="with --redis (regproxy:)")
    passwd.add_argument("--groups", help="Redis: the user's groups (space separated; '' none)")
    passwd.add_argument("--upstream", metavar="URL", help="Redis: the user's registry ('' none)")
    robot_commands.add_arguments(_command(commands, "robot"), _add_config_flag)
    grant_commands.add_arguments(_command(commands, "grant"), _add_config_flag)
    quarantine_commands.add_arguments(_command(commands, "quarantine"), _add_config_flag)
    return parser


def _add_serve_flags(command: argparse.ArgumentParser) -> None:
    _add_config_flag(command)
    command.add_argument(
        "--listen", metavar="HOST:PORT", help="address to serve HTTPS on (default 127.0.0.1:5043)"
    )
    command.add_argument(
        "--upstream", metavar="URL", help="the registry (default http://127.0.0.1:5000)"
    )
    _add_user_file_flags(command)
    command.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate chain (default certs/server.crt)"
    )
    command.add_argument(
        "--tls-key", metavar="FILE", help="PEM private key, unencrypted (default certs/server.key)"
    )
    command.add_argument(
        "--workers", metavar="N", type=int, help="processes sharing the port (default: one per CPU)"
    )
    command.add_argument(
        "--log-level", choices=LOG_LEVELS, help="diagnostics on standard error (default info)"
    )


def _add_user_file_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--htpasswd", metavar="FILE", help="Apache htpasswd file (default conf/htpasswd)"
    )
    command.add_argument("--groups", metavar="FILE", help="Apache group file (default conf/groups)")
    command.add_argument(
        "--acl",
        metavar="FILE",
        help="ACL rules file (default: the config's acl, or the recipe's policy)",
    )


def _add_config_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"YAML configuration (default {DEFAULT_CONFIG_PATH} if it exists)",
    )


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return config_module.normalised(Path(args.config))
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag, None) is not None
    }


def _check(args: argparse.Namespace) -> int:
    """Every problem serve would find (the same function finds them), line-level ones too;
    and, as notes that do not fail the check, the users and groups placeholder rules pass by."""
    notes: list[Problem] = []
    try:
        snapshot, problems = preflight(_config_path(args), _overrides(args))
        notes = _placeholder_notes(snapshot.config) + _prefix_notes(snapshot.config)
    except ConfigError as exc:
        problems = exc.problems
    created = _made_by_make_run(args)
    for problem in problems + notes:
        made = created.get(problem.source)
        print(f"{problem} (`make run` creates it: {made})" if made else problem, file=sys.stderr)
    if problems:
        print(f"configuration has {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("configuration ok")
    return 0


def _made_by_make_run(args: argparse.Namespace) -> dict[str, str]:
    """In a checkout checked with its own config: the missing files that `make run`
    (scripts/run.py) creates, each with what it puts there."""
    if args.config is not None or _overrides(args) or not Path("scripts/run.py").is_file():
        return {}
    try:
        config = config_module.load(_config_path(args))
    except ConfigError:
        return {}
    made = {
        config.htpasswd: "user admin with a random password, printed once",
        config.tls_cert: "a self-signed certificate for localhost",
        config.tls_key: "the self-signed certificate's key",
    }
    if config.groups is not None and not config.htpasswd.exists():
        made[config.groups] = f"{config.push_group}: admin"
    return {str(path): what for path, what in made.items() if not path.exists()}


def _placeholder_notes(config: Config) -> list[Problem]:
    """The htpasswd users and group-file groups, by line, that `${user}` or `${group}` rules
    never match, when the ACL uses those placeholders."""
    patterns = [pattern for rule in config.rules for pattern in rule.repositories]
    htpasswd = config.htpasswd if "htpasswd" in config.auth_backends else None
    notes: list[Problem] = []
    for kind, path in (("user", htpasswd), ("group", config.groups)):
        if path is not None and any(f"${{{kind}}}" in pattern for pattern in patterns):
            with contextlib.suppress(ConfigError):  # unreadable: reported as a problem already
                notes += placeholder_notes(read_text(path), str(path), kind)
    return notes


def _prefix_notes(config: Config) -> list[Problem]:
    """The issuers whose user template or group prefixes have no ':': tokens whose claims
    fill in none are refused, and such groups are dropped."""
    from ..authn.oidc_settings import name_prefix

    notes = []
    for issuer in config.oidc.issuers if config.oidc is not None else ():
        source, _, line = issuer.origin.rpartition(":")
        if ":" not in name_prefix(issuer.user):
            message = (
                f"oidc.issuers.user: {issuer.user!r} has no prefix like 'ci:': tokens whose"
                " name has no ':' are refused (it could be a password user's)"
            )
            notes.append(Problem(source, int(line), message))
        for claim, prefix in issuer.groups:
            if ":" not in prefix:
                message = (
                    f"oidc.issuers.groups: {claim}: {prefix!r} has no ':': groups without one"
                    " are dropped (they could be a group file's)"
                )
                notes.append(Problem(source, int(line), message))
    return notes


def _explain(args: argparse.Namespace) -> int:
    """Print the decision and the rule (file:line) that made it; exit 0 allow, 3 deny."""
    try:
        address = ip_address(args.client) if args.client else None
    except ValueError as exc:
        print(f"--client: {exc}", file=sys.stderr)
        return 2
    if not valid_name(args.repository):
        print(f"{args.repository!r} is not a valid repository name", file=sys.stderr)
        return 2
    if args.tag is not None and not TAG_RE.fullmatch(args.tag):
        print(f"{args.tag!r} is not a valid tag", file=sys.stderr)
        return 2
    try:
        moment = time.time() if args.at is None else parse_moment(args.at)
    except ValueError as exc:
        print(f"--at: {exc}", file=sys.stderr)
        return 2
    try:
        config, missing = _without_missing_user_files(
            config_module.load(_config_path(args), _overrides(args))
        )
        users = load_users(config)[0]
        grants = load_grants(config.grants)[0]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    who = _who(args, config, users, address)
    if isinstance(who, str):
        print(f"REFUSED {args.user}: {who}")
        return 3
    user, groups = who.user, who.robot.principal_groups if who.robot else who.groups
    decision = decide(config.rules, who, args.action, args.repository, args.tag, grants.at(moment))
    check = _tag_check(config, args.action, args.repository, args.tag, decision)
    allowed = decision.allowed and not isinstance(check, Denied)
    target = args.repository + (f":{args.tag}" if args.tag else "")
    print(f"{'ALLOW' if allowed else 'DENY'} {user or '-'} {args.action} {target}")
    if isinstance(check, Denied):
        print(f"  decided by: {_tag_rule_name(check.rule)}")
        print(f"  acl: {decision.reason} allows it")
    else:
        print(f"  decided by: {decision.reason}")
    if decision.grant is not None:
        print(f"  grant: {_grant_words(decision.grant)}")
        print(f"  without it: DENY, {decision.acl_reason}")
    if isinstance(check, Overwrite):
        print(f"  immutable: {_tag_rule_name(check.rule)}: a push changing {args.tag} is refused")
    if isinstance(check, Pointers):
        names = ", ".join(_tag_rule_name(rule) for rule in check.rules)
        print(f"  checked: a delete by digest is refused when a tag guarded by {names} names it")
    if allowed:
        print(f"  upstream: {decision.upstream or config.upstream}")
    print(f"  groups: {', '.join(sorted(groups)) or '(none)'}")
    if who.robot is not None:
        print(f"  robot {who.robot.name} acting as {who.robot.principal}")
    for grant in grants.idle(who.user, args.action, args.repository, moment):
        when = "ended" if moment >= grant.expires else "starts"
        moment_text = timestamp(grant.expires if when == "ended" else grant.granted)
        print(f"  note: grant {grant.id} ({grant.origin}) {when} at {moment_text}")
    for path in missing:
        print(f"  note: {path} does not exist (yet): read as empty")
    known = user in users.htpasswd.users or who.claims or who.robot
    if user and "htpasswd" in config.auth_backends and not known:
        print(f"  note: {user!r} is not in {config.htpasswd}")
    return 0 if allowed else 3


def _grant_words(grant: Grant) -> str:
    """A grant as `explain` describes it."""
    actions = ",".join(a for a in ACTIONS if a in grant.actions)
    by = f" by {grant.granted_by}" if grant.granted_by else ""
    return (
        f"{grant.user} may {actions} {' '.join(grant.repositories)} from"
        f" {timestamp(grant.granted)} until {timestamp(grant.expires)}, granted{by}: {grant.reason}"
    )


def _who(
    args: argparse.Namespace, config: Config, users: UserFiles, address: IPAddress | None
) -> Identity | str:
    """Who `explain` decides for: a user, a robot (by its `robot$NAME`: as if its secret were
    right), or the identity a token with these claims would give; or why there is none."""
    user = None if args.user == "-" else args.user
    if args.claims is not None:
        return _token_identity(args.claims, user, config, users, address)
    if user is not None and user.startswith(USER_PREFIX) and config.robots is not None:
        try:
            robots = load_robots(config.robots)[0]
        except ConfigError as exc:
            return str(exc)
        robot = robots.get(user[len(USER_PREFIX) :])
        if robot is None:
            return f"no robot {user!r} in {config.robots}"
        grant = robot_grant(robot, users, time.time())
        if isinstance(grant, str):
            return grant
        return Identity(user, users.groups_of(user), address, robot=grant)
    groups = users.groups_of(user) if user else frozenset()
    return Identity(user, groups, address)


def _token_identity(
    path: Path, user: str | None, config: Config, users: UserFiles, address: IPAddress | None
) -> Identity | str:
    from ..authn.jwt import Rejected
    from ..authn.oidc import identity_from

    settings = config.oidc
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
    return Identity(name, groups | users.groups_of(name), address, claims, issuer=issuer.issuer)


def _on_config(
    run: Callable[[argparse.Namespace, Config], int],
) -> Callable[[argparse.Namespace], int]:
    """A command that edits a file the config names (`robot`, `grant`): the config loaded,
    and a file it cannot write (a missing directory, no permission) named, not a traceback."""

    def command(args: argparse.Namespace) -> int:
        try:
            config = config_module.load(_config_path(args), {})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        try:
            return run(args, config)
        except OSError as exc:
            print(f"{exc.filename}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 1

    return command


_ANY_DIGEST = "sha256:" + "0" * 64


def _tag_check(
    config: Config, action: Action, repository: str, tag: str | None, decision: Decision
) -> Denied | Overwrite | Pointers | None:
    """What immutable tags and protected deletes add to an allowed manifest request (by
    `tag`, or by digest)."""
    if not decision.allowed:
        return None
    operation = Operation("manifest", action, repository, tag or _ANY_DIGEST)
    return plan(config.tag_rules, operation)


def _tag_rule_name(rule: TagRule) -> str:
    section = next(name for name, kind in TAG_SECTIONS.items() if kind == rule.kind)
    return f"{section} rule {rule.origin}"


def _without_missing_user_files(config: Config) -> tuple[Config, list[Path]]:
    """A dry run needs the rules, not the users: absent user files count as empty."""
    missing = [p for p in (config.htpasswd, config.groups) if p is not None and not p.exists()]
    if config.groups in missing:
        config = replace(config, groups=None)
    if config.htpasswd in missing and "htpasswd" in config.auth_backends:
        backends = tuple(b for b in config.auth_backends if b != "htpasswd")
        config = replace(config, auth_backends=backends)
    return config, missing


def _serve(args: argparse.Namespace) -> int:
    try:
        snapshot, problems = preflight(_config_path(args), _overrides(args))
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
    log.info("open files limit: %d", raise_open_files_limit())
    if config.workers == 1:
        return run_worker(snapshot, sock, _config_path(args), _overrides(args))
    become_supervisor(
        sock,
        _config_path(args),
        _overrides(args),
        config.workers,
        config.log_level,
        str(config.listen),
        config.upstream,
        config.metrics_listen is not None,
    )
    return 1  # not reached: the process is the supervisor now


def _import(args: argparse.Namespace) -> int:
    """Write the YAML; say on stderr, as file:line, what was translated with a difference and
    what was not translated."""
    from ..importer.translate import import_config

    out: Path | None = args.output
    if out is not None and (out.exists() or out.is_symlink()) and not args.force:
        print(f"{out}: exists, not replaced (--force replaces it)", file=sys.stderr)
        return 1
    try:
        imported = import_config(read_text(args.file), str(args.file))
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    for note in imported.notes:
        print(f"{'' if note.translated else 'not '}translated: {note}", file=sys.stderr)
    if out is None:
        sys.stdout.write(imported.yaml_text)
        return 0
    if not _write(out, imported.yaml_text):
        return 1
    print(f"wrote {out}; check it with: regproxy check -c {out}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
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

        return redis_passwd(args, _config_path(args), _read_password)
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
    if not _write(path, text):
        return 1
    print(done)
    return 0


def _unusable_name(user: str) -> str | None:
    """Why a new user name would be unsafe or useless in ACL rules, if it would be: `${user}`
    stands for one repository path component, so `a/b` would reach into user a's namespace,
    and names with capitals or wildcards never match a repository."""
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


def _write(path: Path, text: str) -> bool:
    """Write-then-rename (proxy.core.problems.write_atomically); False after printing why it
    cannot be written."""
    try:
        write_atomically(path, text)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
        print(f"{path}: cannot write: {exc.strerror or exc}{where}", file=sys.stderr)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": _serve,
        "check": _check,
        "explain": _explain,
        "import": _import,
        "passwd": _passwd,
        "robot": _on_config(robot_commands.run),
        "grant": _on_config(grant_commands.run),
        "quarantine": _on_config(quarantine_commands.run),
    }
    try:
        args = _parser().parse_args(argv)
        return commands[args.command](args)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the terminal's ^C ends without a newline
        return 130
    except BrokenPipeError:  # `regproxy import x | head`: the reader has gone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
