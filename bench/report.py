"""run.py's report: the table and the targets met or not; the Check, number format and results
writer that scale.py's report shares."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import compare as two_runs
from bench.cases import (
    MAIN_RATE_CASES,
    Result,
    main_key,
    main_value,
    sweep_keys,
    usage_by_downloads,
)
from bench.chart import chart
from bench.fixtures import Fixtures
from bench.plan import MIB, RESULTS, SECTIONS, Plan
from bench.processes import machine, tool
from bench.stats import bcrypt_floor, ratio, ratio_spread, spread
from bench.targets import DIRECT, LIMIT, TARGET_ORDER, TARGETS, Target


@dataclass(frozen=True)
class Row:
    case: str  # Result.case
    label: str
    metric: str
    kind: str  # "main" (with ratios), "latency", "rss", or the name of a metric to show as is


def rows(plan: Plan, blob_mib: float) -> list[Row]:
    out: list[Row] = []
    for key, title, *_ in MAIN_RATE_CASES:
        out += [
            Row(key, f"{title}, {plan.main_concurrency} conn.", "req/s", "main"),
            Row(key, "", "p50 / p99 ms", "latency"),
            Row(key, "", "CPU ms per request", "cpu_ms_per_request"),
            Row(key, "", "peak RSS MiB", "rss"),
        ]
    if plan.sweep:
        out += [
            Row(key, f"GET /v2/, cost 5, {n} conn.", "req/s", "main") for n, key in sweep_keys(plan)
        ]
    out += [
        Row("get-blob", f"GET {blob_mib:.0f} MiB blob", f"MB/s, median of {plan.get_runs}", "main"),
        Row("get-blob", "", "CPU s per GB", "cpu_s_per_gb"),
        Row("get-blob", "", "peak RSS MiB, 1 GET", "rss"),
    ]
    out += [
        Row(f"parallel-{n}", "", f"peak RSS MiB, {n} concurrent GETs", "rss")
        for n in plan.parallel_downloads
    ]
    out += [
        Row("push", f"skopeo push, {blob_mib:.0f} MiB layer", f"s, median of {plan.push_runs}",
            "main"),
        Row("push", "", "CPU s per push", "cpu_s_per_push"),
        Row("push", "", "peak RSS MiB", "rss"),
    ]  # fmt: skip
    storm = plan.storm
    image_mb = sum(storm.pull_layers_mb)
    for clients in storm.pull_clients:
        out += storm_rows(f"pull-{clients}", f"pull storm, {clients} clients, {image_mb:.0f} MB")
    layers = f"{len(storm.push_layers_kib)} layers of {min(storm.push_layers_kib)}-" \
             f"{max(storm.push_layers_kib)} KiB"  # fmt: skip
    out += storm_rows(f"push-{storm.push_clients}",
                      f"push storm, {storm.push_clients} clients, {layers} each")  # fmt: skip
    return out


def storm_rows(case: str, label: str) -> list[Row]:
    return [
        Row(case, label, "wall s, to the last byte", "main"),
        Row(case, "", "clients completed · errors", "clients"),
        Row(case, "", "request p50 / p99 ms, to headers", "latency"),
        Row(case, "", "CPU s", "cpu_s"),
        Row(case, "", "peak RSS MiB", "rss"),
        Row(case, "", "load generator CPU s (cores)", "generator"),
    ]


def comparable(result: Result | None) -> bool:
    """Measured, and with enough answers for its rate to mean something."""
    return result is not None and "rps_at_most" not in result.metrics


def times(value: float, base: float) -> float:
    return value / base if base else math.inf


def over(ours: Result, theirs: Result) -> float:
    """`ours`' main value over `theirs`': paired by round when both ran in rounds."""
    if ours.runs and theirs.runs:
        return ratio(ours.runs, theirs.runs)
    return times(main_value(ours), main_value(theirs))


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def cell(row: Row, results: dict[tuple[str, str], Result], target: str) -> str:
    result = results.get((row.case, target))
    if result is None:
        return "—"
    metrics = result.metrics
    if row.kind == "rss":
        return f"{result.usage.tree_kib / 1024:.0f} ({result.usage.worker_kib / 1024:.0f})"
    if "rps_at_most" in metrics:  # too few answers for a rate, a latency or a cost per request
        return f"< {number(metrics['rps_at_most'])}" if row.kind == "main" else "—"
    if row.kind == "latency":
        return f"{number(metrics['p50_ms'])} / {number(metrics['p99_ms'])}"
    if row.kind == "clients":
        errors = f" · {metrics['errors']:.0f} errors" if metrics["errors"] else ""
        return f"{metrics['completed']:.0f}/{metrics['clients']:.0f}{errors}"
    if row.kind == "generator":
        return f"{number(metrics['generator_cpu_s'])} ({metrics['generator_cores']:.2f})"
    if row.kind != "main":
        return number(metrics[row.kind]) if row.kind in metrics else "—"
    value = main_value(result)
    text = number(value) + (" s" if main_key(result) == "seconds" else "")
    if len(result.runs) > 1:
        text += f" ±{spread(result.runs):.0%}"
    ratios = [
        f"{over(result, results[(row.case, base)]):.2f}x{base[0]}"
        for base in (DIRECT, LIMIT)
        if base != target and comparable(results.get((row.case, base)))
    ]
    return " · ".join([text + (" !" if result.note else ""), *ratios])


def table(plan: Plan, results: list[Result], blob_mib: float) -> str:
    by_key = {(r.case, r.target): r for r in results}
    lines = [
        "| case | metric | " + " | ".join(TARGET_ORDER) + " |",
        "|---|---|" + "---:|" * len(TARGET_ORDER),
    ]
    measured = {r.case for r in results}
    for row in rows(plan, blob_mib):
        if row.case not in measured:  # a section left out with --only
            continue
        cells = [cell(row, by_key, target) for target in TARGET_ORDER]
        lines.append(f"| {row.label} | {row.metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    goal: str
    measured: str
    met: bool

    @property
    def line(self) -> str:
        """The check as a report's list item."""
        return f"- {'met' if self.met else 'NOT met'}: {self.goal}: {self.measured}"


# The charts need matplotlib, which `make bench` installs (it is no dependency of regproxy).
NO_CHART = (
    "charts skipped: matplotlib is not installed in this venv (`make bench` installs it, or "
    "run: .venv/bin/python -m pip install matplotlib)"
)


def can_chart() -> bool:
    """Whether the charts can be drawn (matplotlib importable)."""
    return importlib.util.find_spec("matplotlib") is not None


def save(name: str, text: str, data: dict[str, Any], chart_to: Callable[[Path], None]) -> None:
    """A report as `<name>-<stamp>` and `<name>latest` (.md, .json, .png) in bench/results;
    `name` is "" or a prefix ending in "-". Without matplotlib: no .png, and a line saying so."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"{name}{data['date']}"
    for base in (stamp, f"{name}latest"):
        (RESULTS / f"{base}.md").write_text(text)
        (RESULTS / f"{base}.json").write_text(json.dumps(data, indent=2) + "\n")
    if not can_chart():
        print(NO_CHART, file=sys.stderr)
        return
    chart_to(RESULTS / f"{stamp}.png")
    shutil.copy(RESULTS / f"{stamp}.png", RESULTS / f"{name}latest.png")


def comparison(
    results: list[Result],
) -> Callable[[str, str, str, Callable[[float], bool]], Check]:
    """compare(goal, case, base, passes): regproxy's main value over `base`'s in `case`."""
    by_key = {(r.case, r.target): r for r in results}

    def compare(goal: str, case: str, base: str, passes: Callable[[float], bool]) -> Check:
        ours, theirs = by_key[(case, "regproxy")], by_key[(case, base)]
        if not (comparable(ours) and comparable(theirs)):
            return Check(goal, "too few answers in the runs to compare", False)
        value = over(ours, theirs)
        shown = f"{value:.2f}x"
        if width := ratio_spread(ours.runs, theirs.runs):
            shown += f" (rounds within ±{width:.0%})"
        return Check(goal, shown, passes(value))

    return compare


def checks(plan: Plan, results: list[Result], workers: int) -> list[Check]:
    """Issue 5's targets for regproxy, as ratios within this run (those whose cases ran)."""
    by_key = {(r.case, r.target): r for r in results}
    measured = {r.case for r in results}
    compare = comparison(results)
    out = [
        compare(f"{case}: ≥ 1.0x limit req/s", case, LIMIT, lambda r: r >= 1.0)
        for case in ("auth-cost5", "auth-cost10", "head-cost5", "head-cost10")
        if case in measured
    ]
    peers = [t for t in ("nginx", "nginx-tuned", "apache") if ("get-blob", t) in by_key]
    if peers:
        best = max(peers, key=lambda t: main_value(by_key[("get-blob", t)]))
        out.append(compare(f"GET blob: ≥ 2x best of nginx/apache ({best})", "get-blob", best,
                           lambda r: r >= 2.0))  # fmt: skip
    if "push" in measured:
        out.append(compare("push: ≤ 1.1x direct time", "push", DIRECT, lambda r: r <= 1.1))
    if ("anonymous", "apache") in by_key:
        out.append(compare("anonymous 401: ≥ 1.5x apache req/s", "anonymous", "apache",
                           lambda r: r >= 1.5))  # fmt: skip
    largest = regproxy_peak_mib(results, tree=False)
    if largest is not None:
        out.append(Check("peak RSS ≤ 48 MiB per worker", f"{largest:.1f} MiB", largest <= 48))
    growth = usage_by_downloads(plan, results, "regproxy")
    if len(growth) > 1:
        (low, low_usage), (high, high_usage) = growth[0], growth[-1]
        low_mib, high_mib = low_usage.tree_kib / 1024, high_usage.tree_kib / 1024
        per_download = (high_mib - low_mib) / (high - low)
        out.append(Check(
            "RSS flat: ≤ 1 MiB more per added concurrent download",
            f"{low_mib:.0f} → {high_mib:.0f} MiB from {low} to {high} downloads "
            f"({per_download:.2f} MiB each; {workers} workers)", per_download <= 1.0,
        ))  # fmt: skip
    return out


PEERS = ("nginx-tuned", "nginx", "apache")  # the authenticating peers


def storm_checks(plan: Plan, results: list[Result], workers: int) -> list[Check]:
    """Issue 19's targets that `make bench` measures (the scale curves' are in scale.py)."""
    by_key = {(r.case, r.target): r for r in results}
    ran = {r.case for r in results}
    compare = comparison(results)
    storm = plan.storm
    out = []
    ours = [r for r in results if r.target == "regproxy" and "clients" in r.metrics]
    if ours:
        failed = [f"{r.case}: {r.note}" for r in ours if r.note]
        out.append(Check(
            "every client of every storm completes with no error (a 429 is one: docker does "
            "not retry it)", "; ".join(failed) or f"all {len(ours)} storms clean", not failed,
        ))  # fmt: skip
    pull = f"pull-{max(storm.pull_clients)}"
    if pull in ran:
        check = compare(f"pull storm, {max(storm.pull_clients)} clients: ≤ 1.05x the limit's "
                        f"wall time, and below every authenticating peer's", pull, LIMIT,
                        lambda r: r <= 1.05)  # fmt: skip
        mine = by_key[(pull, "regproxy")]
        ratios = {p: over(mine, by_key[(pull, p)]) for p in PEERS if (pull, p) in by_key}
        peers = ", ".join(f"{ratio:.2f}x {peer}" for peer, ratio in ratios.items())
        below = all(ratio < 1 for ratio in ratios.values())
        measured = f"{check.measured} the limit; {peers}"
        if mine.note:
            measured = f"{mine.note}: {measured}"
        out.append(Check(check.goal, measured, check.met and below and not mine.note))
    push = f"push-{storm.push_clients}"
    if push in ran:
        check = compare(f"push storm, {storm.push_clients} clients: ≤ 1.1x the limit's wall time",
                        push, LIMIT, lambda r: r <= 1.1)  # fmt: skip
        mine = by_key[(push, "regproxy")]
        measured = f"{mine.note}: {check.measured}" if mine.note else check.measured
        out.append(replace(check, measured=measured, met=check.met and not mine.note))
    tree = regproxy_peak_mib(results, tree=True)
    if tree is not None:
        out.append(Check(
            f"peak RSS of the whole tree ≤ 48 MiB per worker, parent included ({workers} "
            f"workers: {48 * workers} MiB), through the whole bench", f"{tree:.1f} MiB "
            f"({tree / workers:.1f} per worker)", tree <= 48 * workers,
        ))  # fmt: skip
    return out


def regproxy_peak_mib(results: list[Result], tree: bool) -> float | None:
    """regproxy's peak RSS over the cases (its tree's, or its largest process's); None when
    none ran (only the cases with reports of their own: --only configs)."""
    sampled = [r.usage.tree_kib if tree else r.usage.worker_kib
               for r in results if r.target == "regproxy"]  # fmt: skip
    return max(sampled) / 1024 if sampled else None


RATE_PEERS = ("apache", "nginx", "nginx-tuned")


Run = tuple[str, dict[str, Any]]  # a run's name and its JSON


def issue_24_checks(
    plan: Plan, results: list[Result], workers: int, previous: Run | None = None
) -> list[Check]:
    """Issue 24's targets that run.py measures, as ratios within this run; and whether its
    ratios agree with the `previous` run's of the same plan."""
    by_key = {(r.case, r.target): r for r in results}
    ran = {r.case for r in results}
    compare = comparison(results)
    out = []
    if ("anonymous", "apache") in by_key:
        check = compare("anonymous 401: ≥ 1.0x apache req/s", "anonymous", "apache",
                        lambda r: r >= 1.0)  # fmt: skip
        ours = by_key[("anonymous", "regproxy")]
        others = ", ".join(f"{over(ours, by_key[('anonymous', p)]):.2f}x {p}"
                           for p in RATE_PEERS[1:] if ("anonymous", p) in by_key)  # fmt: skip
        out.append(replace(check, measured=f"{check.measured}; {others}"))
    rate = [r for r in results if r.target == "regproxy" and r.case in rate_case_keys(plan)]
    if rate:
        peak = max(rate, key=lambda r: r.usage.tree_kib)
        tree = peak.usage.tree_kib / 1024
        out.append(Check(
            f"peak RSS of the whole tree in the rate cases ≤ 48 MiB per worker, every process "
            f"included ({workers} workers: {48 * workers} MiB)",
            f"{tree:.1f} MiB ({tree / workers:.1f} per worker; largest worker "
            f"{peak.usage.worker_kib / 1024:.1f} MiB; in {peak.case})", tree <= 48 * workers,
        ))  # fmt: skip
    for kind, case, most in (("push", f"push-{plan.storm.push_clients}", 1.3),
                             ("pull", f"pull-{max(plan.storm.pull_clients)}", 1.05)):  # fmt: skip
        if case in ran:
            ours, limit = by_key[(case, "regproxy")], by_key[(case, LIMIT)]
            out.append(storm_floor_check(kind, most, ours, limit))
    if "get-blob" in ran:
        bases = [t for t in (LIMIT, *RATE_PEERS) if ("get-blob", t) in by_key]
        best = max(bases, key=lambda t: main_value(by_key[("get-blob", t)]))
        out.append(compare(f"GET blob: ≥ 1.0x the best of the limit, nginx and Apache ({best})",
                           "get-blob", best, lambda r: r >= 1.0))  # fmt: skip
    if rate:
        out.append(agreement_check(plan, results, previous))
    return out


def agreement_check(plan: Plan, results: list[Result], previous: Run | None) -> Check:
    """Every ratio of this run against the previous run's of the same plan (bench/compare.py);
    regproxy's widest spread of rounds beside it."""
    spreads = {r.case: spread(r.runs) for r in results if r.target == "regproxy" and r.runs}
    case, widest = max(spreads.items(), key=lambda item: item[1])
    rounds = (f"regproxy's rounds within ±{widest:.0%} at worst ({case}, {plan.rate_rounds} x "
              f"{plan.rate_seconds}s)")  # fmt: skip
    goal = f"every ratio within ±{two_runs.AGREE:.0%} of the previous run's of this plan"
    if previous is None:
        return Check(goal, f"no earlier run of this plan in bench/results; {rounds}", False)
    name, data = previous
    current = {"results": [asdict(r) for r in results]}
    found = two_runs.pairs(data, current)
    load = data.get("machine", {}).get("load_average_before", math.nan)
    lines = two_runs.summary(found, two_runs.rate_cases(current))
    measured = f"against {name} (load {load:.1f} before): {'; '.join(lines)}; {rounds}"
    return Check(goal, measured, two_runs.agree(found))


def storm_floor_check(kind: str, most: float, ours: Result, limit: Result) -> Check:
    """A storm against what no authenticating front end avoids: the limit's wall time plus
    one bcrypt check per client spread over the CPUs, both measured in this run."""
    clients = int(ours.metrics["clients"])
    one, cpus = ours.metrics["bcrypt_check_s"], int(ours.metrics["cpus"])
    bound = main_value(limit) + bcrypt_floor(clients, one, cpus)
    value = times(main_value(ours), bound)
    measured = (f"{value:.2f}x ({main_value(ours):.2f} s against {main_value(limit):.2f} s + "
                f"{clients} x {one * 1000:.0f} ms / {cpus} CPUs = {bound:.2f} s)")  # fmt: skip
    if ours.note:
        measured = f"{ours.note}: {measured}"
    goal = (f"{kind} storm, {clients} clients: ≤ {most}x (the limit's wall time + N x one "
            "bcrypt check / CPUs)")  # fmt: skip
    return Check(goal, measured, value <= most and not ours.note)


def rate_case_keys(plan: Plan) -> set[str]:
    return {key for key, *_ in MAIN_RATE_CASES} | {key for _, key in sweep_keys(plan)}


def versions(workers: int) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout + done.stderr).strip().splitlines()[0]

    from importlib.metadata import version

    return {
        "regproxy": f"{version('regproxy')}, aiohttp {version('aiohttp')}, {workers} workers",
        "nginx": first_line([tool("nginx"), "-v"]),
        "apache": first_line([tool("apache2"), "-v"]),
        "docker-registry": first_line([tool("docker-registry"), "--version"]),
        "skopeo": first_line([tool("skopeo"), "--version"]),
        "wrk": first_line([tool("wrk"), "-v"]),
    }


def report(
    plan: Plan, workers: int, cache_ttl: float, targets: dict[str, Target], fixtures: Fixtures,
    results: list[Result], started: float, load_before: float, sections: Sequence[str],
) -> str:  # fmt: skip
    """Print the markdown report and write it, the JSON and the chart under bench/results/."""
    blob_mib = fixtures.layer_size / MIB
    met = checks(plan, results, workers)
    met_19 = storm_checks(plan, results, workers)
    earlier = two_runs.earlier(asdict(plan))
    previous = None if earlier is None else (earlier.stem, json.loads(earlier.read_text()))
    met_24 = issue_24_checks(plan, results, workers, previous)
    only = "" if set(sections) == set(SECTIONS) else f" Only {', '.join(sections)} (--only)."
    wall = time.monotonic() - started
    warmup = f" after an uncounted {plan.rate_warmup}s run" if plan.rate_warmup else ""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        f"## regproxy bench ({plan.name}, {stamp})",
        "",
        f"{os.cpu_count()} CPUs ({platform.platform()}), load average {load_before:.1f} before "
        f"and {os.getloadavg()[0]:.1f} after: anything else running skews every number. "
        f"regproxy with {workers} workers, cache.ttl {cache_ttl:g}. Rate cases: "
        f"{plan.rate_rounds} x {plan.rate_seconds}s per target{warmup}, round-robin (the median "
        f"run, ± half the runs' range; ratios: the median of the rounds' ratios), wrk (1 thread) "
        f"for GET, ab for HEAD; blob GETs with curl; "
        f"{wall:.0f}s in all. {plan.note}{only}",
        "",
        table(plan, results, blob_mib),
        "",
        "Cells: value · xd ratio to direct · xl ratio to limit (for seconds, lower is better). "
        "CPU and peak RSS (MiB) are the target's whole process tree's (its largest worker in "
        "parentheses); for direct, the registry's own. direct and limit do not authenticate: "
        "they answer 200 without credentials. < N: most connections got no answer before the "
        "end (a request takes longer than the run), so at most N req/s. "
        "! = failed requests or unexpected answers (counts in the JSON).",
        "",
        "Storms (bench/storm.py, one asynchronous load generator): every client a different "
        "user (bcrypt cost 10, caches cold), all at once from 127.0.0.1, the docker client's "
        "requests (anonymous ping, then Basic credentials; layers 3 at a time when pulling, "
        "HEAD/POST/PATCH/PUT per blob when pushing); a client stops at its first unexpected "
        "answer, a 429 included, as docker does. Wall time runs to the last byte of the last "
        "client; latency is to the response headers. Load generator: CPU seconds of its "
        "thread (cores kept busy): near 1.00 it, not the target, set the pace.",
        "",
        "Targets for regproxy (issue 5):",
        "",
        *(c.line for c in met),
        "",
        "Targets of issue 19 measured here (the scale curves' are in bench/scale.py's report):",
        "",
        *(c.line for c in met_19),
        "",
        "Targets of issue 24 measured here (ratios paired by round, bench/stats.py):",
        "",
        *(c.line for c in met_24),
    ]
    text = "\n".join(lines) + "\n"
    data = {
        "date": stamp,
        "plan": asdict(plan),
        "wall_seconds": wall,
        "machine": machine(load_before),
        "versions": versions(workers),
        "regproxy_cache_ttl": cache_ttl,
        "blob": {"digest": fixtures.layer_digest, "bytes": fixtures.layer_size},
        "targets": {name: {"what": TARGETS[name], "url": t.url} for name, t in targets.items()},
        "results": [asdict(r) for r in results],
        "sections": list(sections),
        "checks": [asdict(c) for c in met],
        "checks_issue_19": [asdict(c) for c in met_19],
        "checks_issue_24": [asdict(c) for c in met_24],
    }
    save("", text, data, lambda path: chart(plan, results, path))
    return text
