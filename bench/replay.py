"""`regproxy replay`'s throughput and memory: a generated access log of N lines (a registry's
mix: blob and manifest pulls, pushes, pings, anonymous 401s), replayed against an ACL edit by
`regproxy replay` as a subprocess; prints lines a second (wall, and per CPU second) and the
peak RSS, for two sizes, so that flat memory shows as the same RSS for ten times the lines; the
larger with `--jobs 1` and with `--jobs N` (the CPUs), in the same run.

    .venv/bin/python -m bench.replay [--lines N] [--gzip] [--jobs N]
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
from dataclasses import dataclass
from pathlib import Path

from proxy.authn.credentials import hash_password
from proxy.observe.replayjobs import default_jobs

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


@dataclass
class Run:
    """One timed subprocess: wall and CPU seconds, its own peak RSS (KiB), its output."""

    seconds: float
    cpu: float
    rss: int
    output: str


def timed(argv: list[str], expected: int = 0) -> Run:
    began = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own usage and peak RSS
    seconds = time.perf_counter() - began
    assert os.waitstatus_to_exitcode(status) == expected, output
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, output)


def write_log(directory: Path, count: int, compressed: bool) -> Path:
    log = directory / f"access-{count}.log{'.gz' if compressed else ''}"
    opener = gzip.open if compressed else open
    with opener(log, "wt") as out:
        out.writelines(log_lines(count))
    return log


# Python doing the least with each line: the floor replay's own work is measured against.
FLOOR = "import sys; from proxy.observe.logread import open_log\n" \
        "print(sum(1 for line in open_log(sys.argv[1]) if line.split()))"  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="the larger log's lines")
    parser.add_argument("--gzip", action="store_true", help="gzip-compressed logs")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="the larger log's N")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as name:
        directory = Path(name)
        config = setup(directory)
        replay = [sys.executable, "-m", "proxy", "replay", "-c", str(config), "--acl",
                  str(directory / "acl.yaml")]  # fmt: skip
        for count in (args.lines // 10, args.lines):
            log = write_log(directory, count, args.gzip)
            floor = timed([sys.executable, "-c", FLOOR, str(log)])
            for jobs in (1, args.jobs) if count == args.lines else (1,):
                run = timed([*replay, "--jobs", str(jobs), str(log)], expected=1)
                print(run.output.splitlines()[-1])
                print(f"{count} lines, --jobs {jobs}: {count / run.seconds:,.0f} lines/s"
                      f" ({count / run.cpu:,.0f} a CPU second; only reading and splitting them:"
                      f" {count / floor.cpu:,.0f} in one process), peak RSS of a process"
                      f" {run.rss / 1024:.0f} MiB; load average {os.getloadavg()[0]:.1f}"
                      f" on {os.cpu_count()} CPUs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
