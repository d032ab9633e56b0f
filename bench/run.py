"""`make bench`: regproxy side by side with the direct registry, nginx and Apache, in one run.

Starts on free loopback ports, all in one temp dir: a docker-registry, regproxy, nginx as in the
Docker docs' recipe ("nginx"), nginx as an expert would tune it ("nginx-tuned"), Apache httpd as
in the recipe ("apache"), and nginx with TLS and proxying but no authentication ("limit"), all
with the same certificate and users. Every case runs against every target, interleaved (targets
in a rotating order within each case, repeated runs round-robin), while each target's whole
process tree is sampled for peak RSS and CPU time. Prints one markdown table with ratios against
the direct registry and the limit, and writes JSON, a PNG chart and the table under
bench/results/. Everything started is stopped by PID at the end, and the temp dir removed.

    .venv/bin/python -m bench.run [--quick] [--workers N] [--cache-ttl SECONDS]
    .venv/bin/python -m bench.run --only rate --cases anonymous --rounds 9 --profile
    .venv/bin/python -m bench.run --only storm --pulls 64 --targets nginx
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import configs, replicas
from bench.cases import RATE_KEYS, Bench
from bench.fixtures import Fixtures, make_fixtures
from bench.plan import PLANS, RESULTS, SECTIONS, log
from bench.processes import Processes, compile_bytecode, tool
from bench.report import NO_CHART, can_chart, report
from bench.targets import DIRECT, LIMIT, TARGET_ORDER, start_targets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute: shorter, smaller")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="regproxy worker processes (default: the number of CPUs)",
    )
    parser.add_argument(
        "--cache-ttl",
        type=float,
        default=10,
        help="regproxy's cache.ttl (default 10 as shipped; 0: every blob HEAD goes upstream)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graphs of regproxy in each rate, blob GET and storm case "
        "(bench/results/)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--cases",
        help=f"comma-separated rate cases to run (default: all of {','.join(RATE_KEYS)}, "
        "then the sweep)",
    )
    parser.add_argument(
        "--rounds", type=int, help="runs per rate case and target (default: the plan's)"
    )
    parser.add_argument("--seconds", type=int, help="length of each rate run (default: the plan's)")
    parser.add_argument(
        "--warmup", type=int, help="seconds of the uncounted run per target before a rate case's "
        "rounds (0: none; default: the plan's)",
    )  # fmt: skip
    parser.add_argument(
        "--pulls",
        help="comma-separated pull storm sizes, clients (default: the plan's; --pulls 64 is "
        "issue 24's alone)",
    )
    parser.add_argument(
        "--targets",
        help=f"comma-separated targets to run (default: all of {','.join(TARGET_ORDER)}; "
        f"{DIRECT}, {LIMIT} and regproxy always run)",
    )
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    if not sections or not set(sections) <= set(SECTIONS):
        parser.error(f"--only takes some of {','.join(SECTIONS)}")
    plan = PLANS["quick" if args.quick else "full"]
    cases = None if args.cases is None else tuple(c for c in args.cases.split(",") if c)
    if cases is not None and not (cases and set(cases) <= set(RATE_KEYS)):
        parser.error(f"--cases takes some of {','.join(RATE_KEYS)}")
    only = set(TARGET_ORDER if args.targets is None else args.targets.split(","))
    if not only <= set(TARGET_ORDER):
        parser.error(f"--targets takes some of {','.join(TARGET_ORDER)}")
    only |= {DIRECT, LIMIT, "regproxy"}
    try:
        pulls = plan.storm.pull_clients if args.pulls is None else \
            tuple(int(n) for n in args.pulls.split(","))  # fmt: skip
    except ValueError:
        parser.error("--pulls takes numbers of clients, comma-separated")
    if not pulls or min(pulls) < 1:
        parser.error("--pulls takes numbers of clients, comma-separated")
    plan = replace(
        plan, rate_rounds=args.rounds or plan.rate_rounds,
        rate_seconds=args.seconds or plan.rate_seconds, rate_cases=cases,
        rate_warmup=plan.rate_warmup if args.warmup is None else args.warmup,
        storm=replace(plan.storm, pull_clients=pulls),
    )  # fmt: skip
    if not can_chart():
        log(NO_CHART)  # said now, not only after the run
    if "configs" in sections:  # said now, not after the rest of the run
        for name in configs.TOOLS:
            tool(name)
    compile_bytecode(Path.cwd())
    started, load_before = time.monotonic(), os.getloadavg()[0]
    # SIGTERM unwinds like Ctrl-C does, through the `finally` that stops what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="regproxy-bench-"))
    workdir.chmod(0o755)  # nginx and Apache workers (nobody, daemon) read the user files
    processes = Processes()
    try:
        fixtures = make_fixtures(workdir, plan)
        targets = start_targets(
            workdir, fixtures, args.workers, args.cache_ttl, processes, tuple(only)
        )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        profiles = RESULTS / f"profiles-{stamp}" if args.profile else None
        bench = Bench(plan, targets, fixtures, workdir, profiles)
        bench.run(sections)
        registry = f"127.0.0.1:{targets[DIRECT].port}"
        own: dict[str, replicas.Case] = {  # reports of their own, after the others
            "replicas": functools.partial(replicas.run_case, quick=args.quick),
            "configs": functools.partial(configs.run_case, workers=args.workers,
                                         quick=args.quick),
        }  # fmt: skip
        extra_text = "".join(
            "\n" + own_report(name, case, workdir, fixtures, registry, processes)
            for name, case in own.items()
            if name in sections
        )
    finally:
        log("stopping what was started")
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(
        plan, args.workers, args.cache_ttl, targets, fixtures, bench.results, started, load_before,
        sections,
    )  # fmt: skip
    print(text + extra_text, end="")
    log(f"wrote {RESULTS}/latest.md, .json and .png in {time.monotonic() - started:.0f}s")
    return 0


def own_report(
    name: str, case: replicas.Case, workdir: Path, fixtures: Fixtures, registry: str,
    processes: Processes,
) -> str:  # fmt: skip
    """A case with a report of its own; one that fails says why there, and the rest of the
    run (hours of it, maybe) is still reported."""
    try:
        return case(workdir, fixtures, registry, processes)
    except Exception as exc:
        log(f"{name} case failed: {exc!r}")
        return f"## The {name} case failed\n\n{exc!r}\n"


if __name__ == "__main__":
    sys.exit(main())
