"""run.py's chart (matplotlib, installed by `make bench`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cases import MAIN_RATE_CASES, Result, main_value, sweep_keys, usage_by_downloads
from bench.plan import Plan
from bench.targets import TARGET_ORDER


def chart(plan: Plan, results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(r.case, r.target): r for r in results}
    palette = plt.get_cmap("tab10")
    colors = {target: palette(i) for i, target in enumerate(TARGET_ORDER)}
    figure, axes = plt.subplots(3, 4, figsize=(24, 15))

    def grouped(
        ax: Any, cases: Sequence[str], value: Callable[[Result], float], title: str,
        per_request: bool = True, targets: Sequence[str] = TARGET_ORDER,
    ) -> None:  # fmt: skip
        """Bars by case and target, hatched where requests failed; for `per_request` figures,
        none where a rate run had too few answers to tell ("< N" in the table)."""
        width = 0.8 / len(targets)
        for i, target in enumerate(targets):
            xs, ys, failed = [], [], []
            for j, case in enumerate(cases):
                result = by_key.get((case, target))
                if result is None or (per_request and "rps_at_most" in result.metrics):
                    continue
                xs.append(j + i * width)
                ys.append(value(result))
                failed.append(bool(result.note))
            bars = ax.bar(xs, ys, width, label=target, color=colors[target])
            for bar, hatched in zip(bars, failed, strict=True):
                bar.set_hatch("//" if hatched else "")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, fontsize=8)
        ax.set_title(title)

    rate_cases = [case[0] for case in MAIN_RATE_CASES]
    grouped(axes[0][0], rate_cases, main_value,
            f"requests/s, {plan.main_concurrency} connections (no bar: under "
            f"{plan.main_concurrency // 2} answers per {plan.rate_seconds}s run)")  # fmt: skip
    logarithmic(axes[0][0], "y")
    axes[0][0].legend(fontsize=8)
    grouped(axes[0][1], rate_cases, lambda r: r.metrics["p99_ms"], "p99 latency, ms")
    logarithmic(axes[0][1], "y")
    grouped(axes[0][2], rate_cases, lambda r: r.metrics["cpu_ms_per_request"],
            "CPU ms per request (the target's whole process tree)")  # fmt: skip
    logarithmic(axes[0][2], "y")
    sweep = axes[0][3]
    points = sweep_keys(plan)
    for target in TARGET_ORDER:
        swept = [(n, r.metrics["rps"]) for n, k in points if (r := by_key.get((k, target)))]
        sweep.plot([n for n, _ in swept], [rps for _, rps in swept], "o-", label=target,
                   color=colors[target])  # fmt: skip
    logarithmic(sweep, "x")
    sweep.set_xticks([n for n, _ in points], [str(n) for n, _ in points])
    sweep.set_title("GET /v2/ cost 5: requests/s by connections")
    grouped(axes[1][0], ["get-blob"], main_value, "GET blob, MB/s (median)")
    grouped(axes[1][1], ["push"], main_value, "skopeo push, seconds (median)")
    grouped(axes[1][2], [*rate_cases, "get-blob", "push"], lambda r: r.usage.tree_kib / 1024,
            "peak RSS, MiB (whole tree; direct: the registry)", per_request=False)  # fmt: skip
    memory = axes[1][3]
    for target in TARGET_ORDER[1:]:
        growth = usage_by_downloads(plan, results, target)
        memory.plot([n for n, _ in growth], [u.tree_kib / 1024 for _, u in growth], "o-",
                    label=target, color=colors[target])  # fmt: skip
        memory.set_xticks([n for n, _ in growth], [str(n) for n, _ in growth])
    memory.set_title("front end peak RSS (MiB, whole tree) by concurrent blob GETs")
    storm = plan.storm
    pulls = [(n, f"pull-{n}") for n in storm.pull_clients]
    for ax, value, title in (
        (axes[2][0], main_value, "pull storm: wall time, s, by clients (x: clients failed)"),
        (axes[2][1], lambda r: r.metrics["cpu_s"], "pull storm: CPU s of the target's tree"),
    ):
        for target in TARGET_ORDER:
            done = [(n, by_key[(k, target)]) for n, k in pulls if (k, target) in by_key]
            ax.plot([n for n, _ in done], [value(r) for _, r in done], "-", color=colors[target],
                    label=target)  # fmt: skip
            for n, result in done:
                ax.plot(n, value(result), "x" if result.note else "o", color=colors[target])
        logarithmic(ax, "x")
        logarithmic(ax, "y")
        ax.set_xticks([n for n, _ in pulls], [str(n) for n, _ in pulls])
        ax.set_title(title)
    axes[2][0].legend(fontsize=8)
    storms = [k for _, k in pulls] + [f"push-{storm.push_clients}"]
    grouped(axes[2][2], storms[-1:], main_value, "push storm: wall time, s (hatched: failed)",
            per_request=False)  # fmt: skip
    grouped(axes[2][3], storms, lambda r: r.usage.tree_kib / 1024,
            "storms: front end peak RSS, MiB (whole tree)", per_request=False,
            targets=TARGET_ORDER[1:])  # fmt: skip
    figure.suptitle(f"regproxy bench ({plan.name})")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def logarithmic(ax: Any, axis: str) -> None:
    """A log scale, on a panel that has something to show on it (with --only, some have
    nothing: a log scale of nothing is an error)."""
    values = [v for line in ax.lines for v in getattr(line, f"get_{axis}data")()]
    values += [bar.get_height() if axis == "y" else bar.get_x() for bar in ax.patches]
    if any(v > 0 for v in values):
        getattr(ax, f"set_{axis}scale")("log")
