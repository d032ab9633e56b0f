"""`regproxy`: the entry point. Parses the command line, runs the command, and is the only place
that exits; a user's mistake ends in a message, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from . import check, explain, grant, importing, passwd, quarantine, replay, robot, serve
from .parser import Command, build

# The subcommands, in the order `regproxy --help` lists them (adding one: see proxy.cli.parser).
COMMANDS: tuple[Command, ...] = (
    serve,
    check,
    explain,
    importing,
    passwd,
    robot,
    grant,
    quarantine,
    replay,
)


def _parser() -> argparse.ArgumentParser:
    return build(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    runs = {command.NAME: command.run for command in COMMANDS}
    try:
        args = _parser().parse_args(argv)
        return runs[args.command](args)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the terminal's ^C ends without a newline
        return 130
    except BrokenPipeError:  # `regproxy import x | head`: the reader has gone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
