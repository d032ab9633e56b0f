"""`regproxy`: the entry point. Parses the command line, runs the command, and is the only place
that exits; a user's mistake ends in a message, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from .parser import Command, build

# The subcommands, in the order `regproxy --help` lists them, each as (name, module in this
# package) (adding one: see proxy.cli.parser). A command's module is imported only when it is
# named or every command is listed: `check` does not import what `replay` or `grant` need.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("serve", "serve"),
    ("check", "check"),
    ("explain", "explain"),
    ("import", "importing"),
    ("passwd", "passwd"),
    ("robot", "robot"),
    ("grant", "grant"),
    ("quarantine", "quarantine"),
    ("replay", "replay"),
)


def _commands(argv: Sequence[str] = ()) -> tuple[Command, ...]:
    """The command `argv` names first, alone; otherwise (help, a mistake) every command."""
    named = [module for name, module in COMMANDS if list(argv[:1]) == [name]]
    modules = named or [module for _, module in COMMANDS]
    return tuple(importlib.import_module(f".{m}", __package__) for m in modules)


def _parser() -> argparse.ArgumentParser:
    return build(_commands())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = _commands(argv)
        args = build(commands).parse_args(argv)
        return next(c for c in commands if args.command == c.NAME).run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the terminal's ^C ends without a newline
        return 130
    except BrokenPipeError:  # `regproxy import x | head`: the reader has gone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
