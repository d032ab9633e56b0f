"""`regproxy check`: load everything serve would load, like `nginx -t`, and print every problem."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from ..authn.credentials import placeholder_notes
from ..conf import config as config_module
from ..conf.config import Config
from ..conf.snapshot import preflight
from ..core.problems import ConfigError, Problem, read_text
from .parser import add_serve_flags, command, config_path, overrides

NAME = "check"


def add_parser(commands: Any) -> None:
    parser = command(
        commands,
        NAME,
        "check the configuration like `nginx -t` (serve's flags)",
        "Load everything serve would load: the config, the ACL, htpasswd and group files,\n"
        "the robots, grants and quarantine files, the LDAP and token sections, the\n"
        "certificate and key.\n"
        "Print `configuration ok`, or every problem as FILE:LINE: message (in a checkout,\n"
        "with the files `make run` would create).",
        "  0    configuration ok\n  1    problems, each printed",
    )
    add_serve_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Every problem serve would find (the same function finds them), line-level ones too;
    and, as notes that do not fail the check, the users and groups placeholder rules pass by."""
    notes: list[Problem] = []
    try:
        snapshot, problems = preflight(config_path(args), overrides(args))
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
    if args.config is not None or overrides(args) or not Path("scripts/run.py").is_file():
        return {}
    try:
        config = config_module.load(config_path(args))
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
