"""`regproxy quarantine add DIGEST --reason TEXT | list | remove DIGEST`: the quarantine list.

`add` appends an entry to the quarantine file and `remove` removes its lines, each under the
file's lock and written whole then renamed (`proxy.cli.listfile`), so every worker reading the
file applies it within a second. With `state: {backend: redis}` the entry is also written to
(or removed from) the shared store's `quarantine` hash, which every replica polls: a digest is
quarantined on a replica when its own file or the shared store holds it. Commands return exit
codes; `proxy.cli.main` exits.

`add` first reads the manifest from the registry (`upstream`), in `--repository` or else the
first repository of the catalog that has it, and records the blobs it lists with the entry
(`image_blobs`), so every worker refuses them without having read the image. When the
registry cannot tell, the digest is quarantined all the same, and `add` says loudly that its
blobs are not recorded and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..conf.config import Config
from ..core.moments import timestamp
from ..core.problems import ConfigError
from ..http.routes import valid_name
from ..policy.quarantine import Entry, Quarantine
from ..policy.quarantinefile import (
    digest_problem,
    entry_text,
    load_quarantine,
    parse_quarantine,
    parse_shared,
    shared_value,
    text_problem,
)
from ..state.redis_layout import Keys
from .grant import granted_by
from .listfile import Refused, aligned, append, remove
from .parser import add_config_flag, command, on_config

if TYPE_CHECKING:  # redis is imported only when the config names it: explain imports this
    import redis

HEADER = (
    "# regproxy quarantine: written by `regproxy quarantine`, fine to edit by hand.\n"
    "# Every request for these digests is refused; see the README, Quarantine.\n"
)
USAGE = """regproxy quarantine add DIGEST --reason TEXT [--by NAME] [--repository NAME]
                                [--manifest-only] [-c FILE]
       regproxy quarantine list [-c FILE]
       regproxy quarantine remove DIGEST [-c FILE]"""
NAME = "quarantine"
_HELP = (
    "refuse every request for an image, index or blob digest",
    "`add DIGEST --reason TEXT` quarantines a digest: every request for it is refused with\n"
    "403 and the reason, on every worker within a second: the manifest by digest, by any\n"
    "tag naming it, through any index holding it, and the blobs it lists (unless\n"
    "--manifest-only): `add` reads the manifest from the registry, in --repository or else\n"
    "the first repository of the catalog that has it, and records its config and layers\n"
    "(an index: its images') with the entry. With `state: {backend: redis}` every replica\n"
    "applies it too. `list` shows the entries, `remove` lifts one as fast. Nothing is\n"
    "deleted. Needs `quarantine: {file: ...}` or a Redis `state:` in the config.",
    "  0    done\n  1    the config has no quarantine file, a file or Redis problem, nothing"
    " to remove,\n       or (the digest quarantined all the same) its blobs could not be"
    " read from the registry",
)
SHARED = "quarantine"  # the shared store's hash (proxy.state.shared)


class _Present(Refused):
    """The file has an entry for the digest already (the shared store may still lack it)."""


def add_parser(commands: Any) -> None:
    """`regproxy quarantine add DIGEST ... | list | remove DIGEST` and their options."""
    quarantine = command(commands, NAME, *_HELP)
    quarantine.usage = USAGE
    quarantine.add_argument(
        "verb", choices=("add", "list", "remove"), metavar="add|list|remove", help="what to do"
    )
    quarantine.add_argument("digest", nargs="?", metavar="DIGEST", help="sha256:<64 hex digits>")
    quarantine.add_argument("--reason", help="why (sent with every refusal, and audited)")
    quarantine.add_argument(
        "--by", metavar="NAME", help="who quarantines it (default: $SUDO_USER, else your login)"
    )
    quarantine.add_argument(
        "--repository",
        metavar="NAME",
        help="where to read the manifest's blobs (default: searched in the registry's catalog)",
    )
    quarantine.add_argument(
        "--manifest-only",
        action="store_true",
        help="refuse the manifest only, not the blobs it lists (shared base layers)",
    )
    add_config_flag(quarantine)


def _run(args: argparse.Namespace, config: Config) -> int:
    if config.quarantine.file is None and not _shared(config):
        print("the config has no quarantine file: add quarantine: {file: quarantine.yaml}",
              file=sys.stderr)  # fmt: skip
        return 1
    wrong = _wrong_command_line(args)
    if wrong is not None:
        print(f"usage: {USAGE}\nregproxy quarantine: {wrong}", file=sys.stderr)
        return 2
    try:
        if args.verb == "list":
            return _list(config)
        if args.verb == "remove":
            return _remove(config, args.digest)
        return _add(config, args)
    except (ConfigError, Refused) as exc:
        print(exc, file=sys.stderr)
        return 1


run = on_config(_run)


def _wrong_command_line(args: argparse.Namespace) -> str | None:
    """What the command line lacks or has too much of, for the form it takes."""
    options = (args.reason is not None or args.by is not None or args.manifest_only
               or args.repository is not None)  # fmt: skip
    if args.verb == "list":
        return "list takes no other arguments" if options or args.digest else None
    if args.digest is None:
        return f"{args.verb} takes a DIGEST"
    problem = digest_problem(args.digest)
    if problem is not None:
        return f"DIGEST: {problem}"
    if args.verb == "remove":
        return "remove takes one DIGEST, and no options" if options else None
    if args.reason is None:
        return "missing --reason"
    if args.manifest_only and args.repository is not None:
        return "--manifest-only reads no blobs: no --repository"
    if args.repository is not None and not valid_name(args.repository):
        return f"--repository: not a repository name: {args.repository!r}"
    for flag, value in (("--reason", args.reason), ("--by", args.by)):
        problem = text_problem(value) if value is not None else None
        if problem is not None:
            return f"{flag}: {problem}"
    return None


def _add(config: Config, args: argparse.Namespace) -> int:
    entry = Entry(args.digest, args.reason.strip(), int(time.time()), granted_by(args.by),
                  not args.manifest_only)  # fmt: skip
    unread, note = 0, ""
    if entry.blobs:
        entry, unread, note = _with_blobs(config, entry, args.repository)
    path = config.quarantine.file

    def make(text: str) -> str:
        there = parse_quarantine(text, str(path))[0].get(entry.digest)
        if there is not None:
            raise _Present(f"{entry.digest} is already quarantined ({there.origin})")
        return entry_text(entry)

    try:
        if path is not None:
            append(path, HEADER, make)
    except _Present as exc:
        print(exc, file=sys.stderr)
        if not _shared(config):
            return 1
    status = _write_shared(config, lambda client, keys: _hset(client, keys, entry))
    blobs = "" if entry.blobs else " (manifest only)"
    print(f"quarantined {entry.digest}{blobs}: {entry.reason}")
    if note:
        print(note)
    if unread:
        print(f"WARNING: the blobs of {entry.digest} are NOT recorded: only the workers that read"
              " the image refuse them; see above", file=sys.stderr)  # fmt: skip
    return status or unread


def _with_blobs(config: Config, entry: Entry, repository: str | None) -> tuple[Entry, int, str]:
    """`entry` with the blobs its manifest lists, read from the registry, 0 and what to say;
    or the entry as it is and 1, after saying loudly why they could not be read."""
    from ..upstream.imageblobs import Unreadable, image_blobs  # aiohttp: for `add` alone

    where = "in any repository of the registry's catalog"
    try:
        found = asyncio.run(image_blobs(config.upstream, entry.digest, repository,
                                        config.timeouts))  # fmt: skip
    except Unreadable as exc:
        print(f"WARNING: cannot read {entry.digest} from {config.upstream}: {exc}",
              file=sys.stderr)  # fmt: skip
        return entry, 1, ""
    if found is None and repository:
        print(f"WARNING: {repository} has no manifest {entry.digest} at {config.upstream}",
              file=sys.stderr)  # fmt: skip
        return entry, 1, ""
    if found is None:  # a blob, or a manifest not pushed yet: nothing more to record
        return entry, 0, f"no manifest {entry.digest} {where}: no blobs to record"
    count = len(found.blobs)
    note = f"its {count} blob(s) recorded (config and layers), read in {found.repository}"
    return replace(entry, image_blobs=found.blobs), 0, note


def _remove(config: Config, digest: str) -> int:
    path = config.quarantine.file
    count = remove(path, "digest", (digest,)) if path is not None else 0
    removed: list[int] = []
    status = _write_shared(config, lambda client, keys: removed.append(_hdel(client, keys, digest)))
    if not count and not any(removed):
        where = [str(path)] if path is not None else []
        where += ["the shared store"] if _shared(config) else []
        print(f"{digest} is not quarantined in {' nor in '.join(where)}", file=sys.stderr)
        return 1
    print(f"lifted {digest}")
    return status


def _list(config: Config) -> int:
    quarantine = in_force(config)
    if quarantine is None:
        return 1
    rows = [("DIGEST", "SINCE", "BY", "BLOBS", "WHERE", "REASON")]
    for entry in quarantine:
        rows.append((entry.digest, timestamp(entry.added), entry.added_by or "-",
                     _blobs_column(entry), entry.origin, entry.reason))  # fmt: skip
    for line in aligned(rows):
        print(line)
    return 0


def _blobs_column(entry: Entry) -> str:
    if not entry.blobs:
        return "no"
    return "yes" if entry.image_blobs is None else f"yes ({len(entry.image_blobs)})"


def in_force(config: Config) -> Quarantine | None:
    """The entries a proxy with this config applies: the file's and the shared store's (its
    problems printed); None after saying why Redis could not be read."""
    quarantine, problems = load_quarantine(config.quarantine)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not _shared(config):
        return quarantine
    shared = Quarantine()

    def read(client: redis.Redis, keys: Keys) -> None:
        nonlocal shared
        shared, skipped = parse_shared(client.hgetall(keys.shared(SHARED)))  # type: ignore[arg-type]
        for problem in skipped:
            print(problem, file=sys.stderr)

    return None if _write_shared(config, read) else quarantine.merged(shared)


def _shared(config: Config) -> bool:
    return config.state.backend == "redis"


def _write_shared(config: Config, change: Callable[[redis.Redis, Keys], object]) -> int:
    """Apply `change` to (or read) the shared store when one is configured: 0, or 1 after
    saying why it could not be (this machine's file is changed either way)."""
    if not _shared(config):
        return 0
    import redis

    from ..state.redis_store import redis_password
    from .redis_passwd import redis_client

    settings = replace(config.state, timeout=max(config.state.timeout, 5.0))
    try:
        with redis_client(settings, redis_password(settings)) as client:
            change(client, Keys(settings.key_prefix))
    except (redis.RedisError, ConfigError) as exc:
        changed = f" (only {config.quarantine.file} was changed)" if config.quarantine.file else ""
        print(f"Redis at {settings.where}: {exc}{changed}", file=sys.stderr)
        return 1
    return 0


def _hset(client: redis.Redis, keys: Keys, entry: Entry) -> None:
    with client.pipeline() as pipe:  # a transaction: replicas read the hash after the INCR
        pipe.hset(keys.shared(SHARED), entry.digest, shared_value(entry))
        pipe.incr(keys.shared_version(SHARED))
        pipe.execute()


def _hdel(client: redis.Redis, keys: Keys, digest: str) -> int:
    with client.pipeline() as pipe:
        pipe.hdel(keys.shared(SHARED), digest)
        pipe.incr(keys.shared_version(SHARED))
        removed, _ = pipe.execute()
    return int(removed)
