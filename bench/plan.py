"""What a `make bench` run does and how big: the plans, where its files are, its log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "bench" / "templates"
RESULTS = ROOT / "bench" / "results"
MIB = 1 << 20
MB = 1_000_000


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    """How long and how big. The default fits in 5 minutes, --quick in 1."""

    name: str
    # Runs per (rate case, target), round-robin over the targets: the median is reported, and
    # ratios are the median of the rounds' ratios (bench/stats.py), so one run is stable.
    rate_rounds: int
    rate_seconds: int  # length of each run (wrk counts whole seconds)
    # One uncounted run per target before a rate case's rounds (0: none): without it the
    # first round alone paid for cold caches (each regproxy worker's first bcrypt per user,
    # the registry's first reads), one round in three or five.
    rate_warmup: int
    blob_mib: int  # size of the layer that is pulled and pushed
    get_runs: int  # single-download runs per target (the median is reported)
    push_runs: int  # skopeo pushes per target (the median is reported)
    sweep: tuple[int, ...]  # connections of the growth sweep, besides main_concurrency
    parallel_downloads: tuple[int, ...]  # concurrent GETs of the blob (1 is the GET case)
    note: str  # what this plan leaves out, said in the report
    storm: StormPlan
    main_concurrency: int = 64
    rate_cases: tuple[str, ...] | None = (
        None  # --cases: the rate cases run (None: all, the sweep too)
    )


@dataclass(frozen=True)
class StormPlan:
    """The storms: clients at once, each a different user with a bcrypt cost-10 hash."""

    pull_clients: tuple[int, ...]  # one pull storm per entry
    pull_layers_mb: tuple[float, ...]  # the pulled image's layers (10^6 bytes)
    push_clients: int
    push_layers_kib: tuple[int, ...]  # each pushed image's layers
    timeout: float  # seconds a storm may take; clients still running then count as errors


FULL_STORM = StormPlan(
    pull_clients=(1, 8, 32, 64), pull_layers_mb=(1, 2, 3, 5, 8, 10, 15, 20),
    push_clients=16, push_layers_kib=(16, 32, 64, 128, 192, 256, 384, 512), timeout=300,
)  # fmt: skip

PLANS = {
    "full": Plan(
        name="full", rate_rounds=5, rate_seconds=2, rate_warmup=1, blob_mib=256, get_runs=3,
        push_runs=2,
        sweep=(1, 8, 256),
        parallel_downloads=(4, 16), note="", storm=FULL_STORM,
    ),
    # wrk runs whole seconds, so a minute leaves no room for the sweep's 18 extra runs; fewer
    # connections leave less bcrypt behind to wait for after each cost-10 run. A storm costs
    # nginx and Apache a cost-10 bcrypt per request: the quick storms are small.
    "quick": Plan(
        name="quick", rate_rounds=3, rate_seconds=1, rate_warmup=1, blob_mib=16, get_runs=2,
        push_runs=1,
        sweep=(),
        parallel_downloads=(4, 16), main_concurrency=16,
        storm=replace(FULL_STORM, pull_clients=(8,), push_clients=4, timeout=120,
                      pull_layers_mb=tuple(mb / 8 for mb in FULL_STORM.pull_layers_mb)),
        note="Quick run: 16 connections instead of 64, a 16 MiB blob instead of 256 MiB, "
        "1 push per target, no sweep over connections; storms of 8 pulls of an 8 MB image "
        "and 4 pushes.",
    ),
}  # fmt: skip
SECTIONS = ("rate", "get", "push", "storm", "replicas", "configs")  # --only picks some
