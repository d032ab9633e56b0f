"""The `regproxy` argparse tree and the flags its commands share.

A subcommand is one module of `proxy/cli/` with `NAME`, `add_parser(commands)` (its parser,
made with `command()`) and `run(args) -> int` (the exit status, never `sys.exit`), and one line
in `proxy.cli.main.COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..conf import config as config_module
from ..conf.config import DEFAULT_CONFIG_PATH, FLAG_KEYS, LOG_LEVELS, Config
from ..core.problems import ConfigError

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


class Command(Protocol):
    """A subcommand module."""

    NAME: str

    def add_parser(self, commands: Any) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks; option help is wrapped."""


def build(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """The whole tree: `regproxy` and each command's parser, in the order given."""
    parser = argparse.ArgumentParser(
        prog="regproxy", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"regproxy {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    for module in commands:
        module.add_parser(subparsers)
    return parser


def command(
    commands: Any, name: str, summary: str, description: str, exits: str
) -> argparse.ArgumentParser:
    """A command's parser: `summary` in `regproxy --help`, its own exit codes in its help."""
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=description,
        epilog=f"exit codes:\n{exits}\n  2    the command line is wrong\n  130  interrupted",
        formatter_class=_Formatter,
    )


def add_serve_flags(command: argparse.ArgumentParser) -> None:
    """The flags of `serve` and `check`."""
    add_config_flag(command)
    command.add_argument(
        "--listen", metavar="HOST:PORT", help="address to serve HTTPS on (default 127.0.0.1:5043)"
    )
    command.add_argument(
        "--upstream", metavar="URL", help="the registry (default http://127.0.0.1:5000)"
    )
    add_user_file_flags(command)
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


def add_user_file_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--htpasswd", metavar="FILE", help="Apache htpasswd file (default conf/htpasswd)"
    )
    command.add_argument("--groups", metavar="FILE", help="Apache group file (default conf/groups)")
    command.add_argument(
        "--acl",
        metavar="FILE",
        help="ACL rules file (default: the config's acl, or the recipe's policy)",
    )


def add_config_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"YAML configuration (default {DEFAULT_CONFIG_PATH} if it exists)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file `-c` names, else the default one when it exists."""
    if args.config is not None:
        return config_module.normalised(Path(args.config))
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The config keys the flags given set (`FLAG_KEYS`)."""
    return {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag, None) is not None
    }


def on_config(
    run: Callable[[argparse.Namespace, Config], int],
) -> Callable[[argparse.Namespace], int]:
    """A command that edits a file the config names (`robot`, `grant`), given the config."""

    def command(args: argparse.Namespace) -> int:
        try:
            config = config_module.load(config_path(args), {})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        try:
            return run(args, config)
        except OSError as exc:
            # A file it cannot write (a missing directory, no permission) is named, not a traceback.
            print(f"{exc.filename}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 1

    return command
