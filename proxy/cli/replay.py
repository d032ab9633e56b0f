"""`regproxy replay LOG...`: the logged requests decided under the running policy files and
under proposed ones (`--acl`, `--groups`, `--htpasswd`, `--proposed-config`), and the requests
whose answer would change. Exit codes: 0 nothing changes, 1 something does, 2 the input cannot
be used. The work is in `proxy.observe.replay`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..conf import config as config_module
from ..conf.config import Config
from ..conf.snapshot import load_users
from ..core.problems import ConfigError
from ..observe.replay import Policy, Users
from ..observe.replayjobs import Unreadable, default_jobs, replay_logs
from ..observe.replayreport import as_json, text_lines
from ..policy.grantfile import load_grants
from ..policy.rules import RuleSet
from .parser import add_config_flag, command, config_path

_PROPOSED = {"acl": "acl", "groups": "groups", "htpasswd": "htpasswd"}  # flag: config key


NAME = "replay"


def add_parser(commands: Any) -> None:
    replay = command(
        commands,
        NAME,
        "which logged requests a proposed policy change would answer differently",
        "Decide every request of the access logs (regproxy's formats, Apache's and nginx's;\n"
        "plain or gzip) twice: under the config's files and under the proposed ones (--acl,\n"
        "--groups, --htpasswd, --proposed-config), and list the requests whose answer would\n"
        "change, grouped by user, action and repositories, with the rules that decide.\n"
        "What a log cannot tell (requests refused before authentication, users only LDAP or\n"
        "tokens know, token requests, lines outside /v2) is counted, never guessed.",
        "  0    nothing changes\n  1    some requests would be answered differently\n"
        "  2    a log or a config cannot be used",
    )
    add_config_flag(replay)
    replay.add_argument(
        "logs", nargs="+", metavar="LOG", help="access logs (plain or gzip; - for stdin)"
    )
    replay.add_argument(
        "--proposed-config", type=Path, metavar="FILE", help="the proposed config (default: -c's)"
    )
    replay.add_argument("--acl", metavar="FILE", help="the proposed ACL rules file")
    replay.add_argument("--groups", metavar="FILE", help="the proposed group file")
    replay.add_argument("--htpasswd", metavar="FILE", help="the proposed htpasswd file")
    replay.add_argument("--json", action="store_true", help="the report as one JSON object")
    replay.add_argument(
        "--jobs", type=_positive, default=default_jobs(), metavar="N",
        help="processes reading the logs (default: the CPUs, at most 8); the report is the same",
    )  # fmt: skip


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text}")
    return number


def run(args: argparse.Namespace) -> int:
    running = config_path(args)
    proposed = args.proposed_config or running
    changed = {key: getattr(args, flag) for flag, key in _PROPOSED.items()
               if getattr(args, flag) is not None}  # fmt: skip
    try:
        before = policy(config_module.load(running, {}))
        after = policy(config_module.load(proposed, changed))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        stdin = sys.stdin.buffer
        replay = replay_logs(before, after, args.logs, args.jobs, stdin)  # type: ignore[arg-type]
    except Unreadable as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_json(replay, args.logs), indent=2))
    else:
        print("\n".join(text_lines(replay)))
    if not replay.requests:
        print("nothing to replay: no line of the logs is an access line", file=sys.stderr)
        return 2
    return 1 if replay.changes else 0


def policy(config: Config) -> Policy:
    """One side of the replay, from a config and the files it names."""
    files = load_users(config)[0]
    grants = load_grants(config.grants)[0]
    others: list[str] = [b for b in config.auth_backends if b != "htpasswd"]
    if config.oidc is not None:
        others.append("oidc")
    known: Mapping[str, object] = files.htpasswd.users if "htpasswd" in config.auth_backends else {}
    users = Users(known, files.memberships, str(config.htpasswd), tuple(others))
    token = config.token.path if config.token is not None else None
    return Policy(RuleSet(config.rules), grants, users, config.upstream, token)
