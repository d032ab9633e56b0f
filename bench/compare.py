"""Two `bench.run` results side by side: every ratio the report gives, in both runs, and
whether they agree within ±10% (issue 24's test of the method, on a quiet machine).

    .venv/bin/python -m bench.compare                  # the two newest runs of the same plan
    .venv/bin/python -m bench.compare A.json B.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan import RESULTS
from bench.stats import ratio
from bench.targets import DIRECT, LIMIT, TARGET_ORDER

AGREE = 0.10  # two runs agree when every ratio of the second is within ±10% of the first's
PEERS = ("nginx-tuned", "nginx", "apache")  # regproxy is also held against each of these
MAIN_METRICS = ("rps", "mbps", "seconds")  # as bench/cases.py: a result's main value


@dataclass(frozen=True)
class Pair:
    """One ratio of the report (`target` over `base` in `case`) in run A and in run B."""

    case: str
    target: str
    base: str
    a: float
    b: float

    @property
    def difference(self) -> float:
        """B's ratio over A's, less one: 0.04 means B's is 4% above A's."""
        return self.b / self.a - 1 if self.a else math.inf

    @property
    def agrees(self) -> bool:
        return abs(self.difference) <= AGREE


def ratios(data: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """Every ratio a run's report gives: each target over direct and over the limit (the
    table's xd and xl), and regproxy over each authenticating peer (the targets' checks);
    keyed (case, target, base). Ratios of rates too few to count are left out, as the
    report leaves them out."""
    results = {(r["case"], r["target"]): r for r in data["results"]}
    out: dict[tuple[str, str, str], float] = {}
    for (case, target), result in results.items():
        if not _counted(result):
            continue
        bases = [DIRECT, LIMIT] + (list(PEERS) if target == "regproxy" else [])
        for base in bases:
            other = results.get((case, base))
            if base != target and other is not None and _counted(other):
                out[(case, target, base)] = _over(result, other)
    return out


def _counted(result: dict[str, Any]) -> bool:
    metrics = result["metrics"]
    return "rps_at_most" not in metrics and any(key in metrics for key in MAIN_METRICS)


def _over(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    """As the report computes it: paired by round when both ran in rounds."""
    if ours["runs"] and theirs["runs"]:
        return ratio(ours["runs"], theirs["runs"])
    return ratio([_main(ours)], [_main(theirs)])


def _main(result: dict[str, Any]) -> float:
    return float(next(result["metrics"][k] for k in MAIN_METRICS if k in result["metrics"]))


def pairs(a: dict[str, Any], b: dict[str, Any]) -> list[Pair]:
    """The ratios both runs give, in the report's order of cases and targets."""
    first, second = ratios(a), ratios(b)
    cases = list(dict.fromkeys(r["case"] for r in a["results"]))
    order = {name: i for i, name in enumerate(TARGET_ORDER)}
    keys = sorted(
        first.keys() & second.keys(),
        key=lambda k: (cases.index(k[0]), order.get(k[1], 99), order.get(k[2], 99)),
    )
    return [Pair(*key, first[key], second[key]) for key in keys]


def rate_cases(data: dict[str, Any]) -> set[str]:
    """The cases measured in rounds of requests per second (the rate cases and the sweep)."""
    return {r["case"] for r in data["results"] if r["runs"] and "rps" in r["metrics"]}


def summary(found: Sequence[Pair], rates: set[str]) -> list[str]:
    """The figure: the widest difference, over every ratio and over the rate cases alone."""
    lines = []
    for label, chosen in (
        ("every ratio", list(found)),
        ("the rate cases' ratios", [p for p in found if p.case in rates]),
    ):
        if not chosen:
            continue
        widest = max(chosen, key=lambda p: abs(p.difference))
        agreeing = sum(p.agrees for p in chosen)
        lines.append(
            f"{label}: {agreeing} of {len(chosen)} within ±{AGREE:.0%}, widest "
            f"{widest.difference:+.0%} ({widest.case}, {widest.target} over {widest.base})"
        )
    return lines


def agree(found: Sequence[Pair]) -> bool:
    return bool(found) and all(p.agrees for p in found)


def text(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> str:
    """The markdown comparison: a row per ratio, then the summary."""
    found = pairs(a, b)
    lines = [
        f"## bench.compare: {names[0]} ({_described(a)}) against {names[1]} ({_described(b)})",
        "",
        "| case | ratio | A | B | B over A |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {p.case} | {p.target} / {p.base} | {p.a:.3g}x | {p.b:.3g}x | "
            f"{p.difference:+.0%}{'' if p.agrees else ' !'} |"
            for p in found
        ),
        "",
        *(f"- {line}" for line in summary(found, rate_cases(a))),
        "",
        f"The runs {'agree' if agree(found) else 'do NOT agree'} within ±{AGREE:.0%} on every "
        "ratio.",
    ]
    return "\n".join(lines) + "\n"


def _described(data: dict[str, Any]) -> str:
    plan = data["plan"]
    load = data.get("machine", {}).get("load_average_before")
    rounds = f"{plan['rate_rounds']} x {plan['rate_seconds']}s"
    if plan.get("rate_warmup"):
        rounds += f" after {plan['rate_warmup']}s warm-up"
    load_text = f", load {load:.1f} before" if isinstance(load, (int, float)) else ""
    return f"{plan['name']}, {rounds}{load_text}"


def earlier(plan: dict[str, Any], directory: Path = RESULTS, before: str = "3") -> Path | None:
    """The newest timestamped run in `directory` (stamped before `before`) made with the same
    plan, rounds, lengths and cases alike; None when there is none."""
    plan = json.loads(json.dumps(plan))  # as a JSON file holds it: tuples are lists
    for path in sorted(directory.glob("2*.json"), reverse=True):
        if path.stem < before and json.loads(path.read_text()).get("plan") == plan:
            return path
    return None


def newest_two(directory: Path = RESULTS) -> tuple[Path, Path]:
    """The newest run in `directory` and the one of the same plan before it."""
    runs = sorted(directory.glob("2*.json"))
    if not runs:
        raise SystemExit(f"no runs in {directory}")
    newest = runs[-1]
    first = earlier(json.loads(newest.read_text())["plan"], directory, newest.stem)
    if first is None:
        raise SystemExit(f"only one run of its plan in {directory}: {newest.name}")
    return first, newest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="two bench.run JSON results")
    args = parser.parse_args(argv)
    if len(args.runs) not in (0, 2):
        parser.error("give two results, or none for the two newest runs of the same plan")
    first, second = args.runs or newest_two()
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    print(text(a, b, (first.name, second.name)), end="")
    return 0 if agree(pairs(a, b)) else 1


if __name__ == "__main__":
    sys.exit(main())
