"""`regproxy replay`'s throughput and memory: a generated access log of N lines (a registry's
mix: blob and manifest pulls, pushes, pings, anonymous 401s), replayed against an ACL edit by
`regproxy replay` as a subprocess; prints lines a second and the peak RSS, for two sizes, so
that flat memory shows as the same RSS for ten times the lines.

    .venv/bin/python -m bench.replay [--lines N] [--gzip]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from proxy.authn.credentials import hash_password

USERS = [f"user{n}" for n in range(50)]
TEAMS = [f"team{n}" for n in range(10)]
ACL = """\
- groups: [pusher]
  actions: ["*"]
- groups: [team1, team2]
  repositories: ["team1/**", "team2/**"]
  actions: [pull, push]
- repositories: ["library/**", "team3/**"]
  actions: [pull]
"""


def log_lines(count: int, seed: int = 7) -> Iterator[str]:
    """`count` access lines in regproxy's combined_duration format, one a millisecond. Blobs
    are each repository's ten layers, as pulls of the same images repeat them; upload ids are
    new."""
    pick = random.Random(seed)
    layers = [f"sha256:{pick.getrandbits(256):064x}" for _ in range(10)]
    start = 1_796_500_000
    agent = '"-" "containers/5.23.1 (github.com/containers/image)"'
    for n in range(count):
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(start + n // 1000))
        user = pick.choice(USERS)
        team, app = pick.randrange(len(TEAMS)), pick.randrange(20)
        repo = f"{TEAMS[team]}/app{app}"
        digest = f"{pick.choice(layers)[:-4]}{team:02x}{app:02x}"  # ten layers a repository
        roll = pick.random()
        if roll < 0.05:
            user, request, status = "-", "GET /v2/ HTTP/1.1", 401
        elif roll < 0.55:
            request, status = f"HEAD /v2/{repo}/blobs/{digest} HTTP/1.1", 200
        elif roll < 0.75:
            request, status = f"GET /v2/{repo}/blobs/{digest} HTTP/1.1", 200
        elif roll < 0.9:
            request, status = f"GET /v2/{repo}/manifests/v{pick.randrange(9)} HTTP/1.1", 200
        else:
            request, status = f"PATCH /v2/{repo}/blobs/uploads/{pick.getrandbits(64):x}", 202
            request += " HTTP/1.1"
        yield f'10.0.{n % 7}.{n % 250} - {user} [{stamp}] "{request}" {status} 512 {agent} 1200\n'


def setup(directory: Path) -> Path:
    """The config, htpasswd (every user), groups and the proposed ACL; the config's path."""
    stored = hash_password("pw", 4)
    (directory / "htpasswd").write_text("".join(f"{user}:{stored}\n" for user in USERS))
    groups = "".join(f"{team}: {' '.join(USERS[i::10])}\n" for i, team in enumerate(TEAMS))
    (directory / "groups").write_text(f"pusher: user0\n{groups}")
    (directory / "acl.yaml").write_text(ACL)
    config = directory / "regproxy.yaml"
    config.write_text("htpasswd: htpasswd\ngroups: groups\n")
    return config


def measure(
    directory: Path, config: Path, count: int, compressed: bool
) -> tuple[float, float, int]:
    """(lines a second, lines a second of CPU time, peak RSS in KiB) of one replay of a
    `count`-line log. On a shared machine the second says more than the first."""
    log = directory / f"access-{count}.log{'.gz' if compressed else ''}"
    opener = gzip.open if compressed else open
    with opener(log, "wt") as out:
        out.writelines(log_lines(count))
    argv = [sys.executable, "-m", "proxy", "replay", "-c", str(config), "--acl",
            str(directory / "acl.yaml"), str(log)]  # fmt: skip
    began = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    report = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
    seconds = time.perf_counter() - began
    assert os.waitstatus_to_exitcode(status) == 1, report  # the ACL edit changes answers
    print(report.splitlines()[-1])
    return count / seconds, count / (usage.ru_utime + usage.ru_stime), usage.ru_maxrss


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="the larger log's lines")
    parser.add_argument("--gzip", action="store_true", help="gzip-compressed logs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as name:
        directory = Path(name)
        config = setup(directory)
        for count in (args.lines // 10, args.lines):
            rate, cpu_rate, rss = measure(directory, config, count, args.gzip)
            print(f"{count} lines: {rate:,.0f} lines/s ({cpu_rate:,.0f} a CPU second),"
                  f" peak RSS {rss / 1024:.0f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
