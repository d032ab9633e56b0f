"""`regproxy import`: an Apache httpd.conf or nginx config translated into regproxy YAML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.problems import ConfigError, read_text
from .listfile import write
from .parser import command

NAME = "import"


def add_parser(commands: Any) -> None:
    convert = command(
        commands,
        NAME,
        "translate an Apache httpd.conf or nginx config into regproxy YAML",
        "Translate a httpd.conf or nginx server block written like the Docker recipes\n"
        "(Listen, SSLCertificateFile, AuthUserFile, AuthGroupFile, <Limit>, ProxyPass; or\n"
        "listen, ssl_certificate, auth_basic_user_file, limit_except, proxy_pass). What was\n"
        "translated with a difference, and what was not translated, is listed on standard\n"
        "error as `translated:` and `not translated:` FILE:LINE notes.",
        "  0    written\n  1    FILE cannot be read or is no such config, or OUT exists (--force)",
    )
    convert.add_argument(
        "file", type=Path, metavar="FILE", help="the httpd.conf or nginx config to translate"
    )
    convert.add_argument(
        "-o", "--output", type=Path, metavar="OUT", help="write here (default: stdout)"
    )
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
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
    if not write(out, imported.yaml_text):
        return 1
    print(f"wrote {out}; check it with: regproxy check -c {out}")
    return 0
