"""`regproxy explain USER ACTION REPOSITORY`: which rule allows or denies a request, a dry run
of the ACL."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..authn.htpasswd import UserFiles
from ..authn.robotfile import USER_PREFIX, load_robots
from ..authn.robots import grant as robot_grant
from ..conf import config as config_module
from ..conf.config import Config
from ..conf.snapshot import load_users
from ..core.addresses import IPAddress, ip_address
from ..core.moments import parse_moment, timestamp
from ..core.problems import ConfigError, read_text
from ..http.routes import ACTIONS, TAG_RE, Action, Operation, valid_name
from ..policy.acl import TAG_SECTIONS
from ..policy.grantfile import load_grants
from ..policy.grants import Grant
from ..policy.identity import Identity
from ..policy.quarantinefile import digest_problem
from ..policy.ratelimits import explained
from ..policy.rules import Decision, decide
from ..policy.tagrules import Denied, Overwrite, Pointers, TagRule, plan
from .parser import add_config_flag, add_user_file_flags, command, config_path, overrides
from .quarantine import in_force

NAME = "explain"


def add_parser(commands: Any) -> None:
    explain = command(
        commands,
        NAME,
        "which rule allows or denies USER ACTION REPOSITORY",
        "Dry-run the ACL: print ALLOW or DENY, the rule that decided (FILE:LINE), the\n"
        "upstream the request would go to and the user's groups. --acl tries a rules file\n"
        "before putting it in the config. --tag: a manifest request by that tag (tag rules,\n"
        "immutable tags, protected deletes); without it, by digest (or a blob). A\n"
        "break-glass grant that decides is named, with what the ACL alone would say; --at\n"
        "decides at another moment (grants in force then). --digest: a request by that digest\n"
        "(a quarantined one, or a blob recorded with a quarantined image, is refused whatever\n"
        "allows it).",
        "  0    allowed\n  3    denied\n  1    the configuration cannot be loaded",
    )
    add_config_flag(explain)
    add_user_file_flags(explain)
    explain.add_argument(
        "user", metavar="USER", help="user name, or - for a request without credentials"
    )
    explain.add_argument("action", choices=ACTIONS, metavar="ACTION", help="pull, push or delete")
    explain.add_argument(
        "repository", metavar="REPOSITORY", help="repository name, e.g. library/ubuntu"
    )
    explain.add_argument("--client", metavar="IP", help="client address, for rules with networks")
    reference = explain.add_mutually_exclusive_group()
    reference.add_argument("--tag", metavar="TAG", help="a manifest request by this tag")
    reference.add_argument(
        "--digest", metavar="DIGEST", help="a manifest or blob request by this digest"
    )
    explain.add_argument(
        "--at", metavar="TIME", help="decide at this ISO 8601 time (grants in force then)"
    )
    explain.add_argument(
        "--claims",
        type=Path,
        metavar="FILE",
        help="a workload token's claims (JSON or YAML): decide for the identity it would give",
    )


def run(args: argparse.Namespace) -> int:
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
    if args.digest is not None and (problem := digest_problem(args.digest)):
        print(f"--digest: {problem}", file=sys.stderr)
        return 2
    try:
        moment = time.time() if args.at is None else parse_moment(args.at)
    except ValueError as exc:
        print(f"--at: {exc}", file=sys.stderr)
        return 2
    try:
        config, missing = _without_missing_user_files(
            config_module.load(config_path(args), overrides(args))
        )
        users = load_users(config)[0]
        grants = load_grants(config.grants)[0]
        quarantined = in_force(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if quarantined is None:
        return 1
    who = _who(args, config, users, address)
    if isinstance(who, str):
        print(f"REFUSED {args.user}: {who}")
        return 3
    user, groups = who.user, who.robot.principal_groups if who.robot else who.groups
    decision = decide(config.rules, who, args.action, args.repository, args.tag, grants.at(moment))
    check = _tag_check(config, args.action, args.repository, args.tag, decision)
    entry = quarantined.get(args.digest) or quarantined.recorded(args.digest or "")
    of = f" (a layer or config of {entry.digest})" if entry and entry.digest != args.digest else ""
    allowed = decision.allowed and not isinstance(check, Denied) and entry is None
    target = args.repository + (
        f":{args.tag}" if args.tag else f"@{args.digest}" if args.digest else ""
    )
    print(f"{'ALLOW' if allowed else 'DENY'} {user or '-'} {args.action} {target}")
    if entry is not None and decision.allowed:
        print(f"  decided by: quarantine {entry.origin}{of}: {entry.reason}")
        print(f"  acl: {decision.reason} allows it")
    elif isinstance(check, Denied):
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
    if allowed and config.rate_limits is not None:
        for line in explained(config.rate_limits, who, address, args.action):
            print(f"  rate limit: {line}")
    for grant in grants.idle(who.user, args.action, args.repository, moment):
        when = "ended" if moment >= grant.expires else "starts"
        moment_text = timestamp(grant.expires if when == "ended" else grant.granted)
        print(f"  note: grant {grant.id} ({grant.origin}) {when} at {moment_text}")
    if entry is not None and not decision.allowed:
        print(f"  quarantined too: {entry.origin}{of}: {entry.reason}")
    elif quarantined and entry is None:
        print(f"  note: {len(quarantined)} digest(s) quarantined (regproxy quarantine list): a"
              " request reaching one (by digest, tag, index or blob) is refused")  # fmt: skip
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
