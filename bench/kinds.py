"""Scale curves of `bench/scale.py` for issue 24: every kind of request at 10 and at 10,000 ACL
rules, and starting, reloading and checking a large deployment.

- kinds: the ping, the catalog (`n=100`), the token endpoint (one repository scope), a manifest
  GET and a blob GET, each sent (wrk, one worker) by a caller matched by the first rule, one
  in the middle, the last, and by none, and by one in 1,000 groups the rules name (4 of them
  at 10 rules; their own rule is the last); the same regproxy for every kind, one per rule
  count, up at once, rounds alternating between them. The ratio is 10,000 rules' req/s over
  10's.
- big: 10,000 rules, 100,000 htpasswd users and 1,000 groups (each user in one, the callers in
  all): `regproxy check`, startup to the first answer (also with one worker per CPU), and a
  reload of the ACL (one rule more).

With `--baseline DIR`, each regproxy is also run from the checkout at DIR (another commit),
in the same run, so a change is measured against what it changes under the same load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import yaml

from bench import storm
from bench.load import wrk
from bench.processes import Processes
from bench.report import number
from bench.scale import (
    TIMES,
    USER,
    Plan,
    Point,
    Setup,
    from_checkout,
    htpasswd_text,
    idle_rss_mib,
    measure_reload,
    regproxy,
    replace_file,
    startup_median,
)

CALLERS = ("first", "middle", "last", "none", "grouped")
GROUPED = 1_000  # the groups of the caller "grouped": every other group rule's, from the start
KINDS = ("ping", "catalog", "token", "manifest", "blob")
RULE_COUNTS = (10, 10_000)
BIG = {"rules": 10_000, "users": 100_000, "groups": 1_000}
CPUS = os.cpu_count() or 1
TOKEN_SERVICE = "bench"


def log(message: str) -> None:
    print(f"[kinds {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def acl(count: int) -> str:
    """`count` rules: the callers' at the first, middle and last place, the others for users
    and groups the callers are not (so every caller, whatever it asks, meets its own)."""
    places = {0: "first", count // 2: "middle", count - 1: "last"}
    rules: list[dict[str, object]] = []
    for i in range(count):
        if i in places:
            users = [places[i], *([USER] if i == 0 else [])]  # USER: to see it is ready
            users += ["grouped"] if i == count - 1 else []
            rules.append({"users": users, "repositories": ["scale/**", "*/app07"],
                          "actions": ["pull"]})  # fmt: skip
        elif i % 2:
            rules.append({"users": [f"user{i:06d}"], "repositories": [f"home{i:05d}/**"],
                          "actions": ["pull", "push"]})  # fmt: skip
        else:
            rules.append({"groups": [f"team{i:05d}"], "repositories": [f"team{i:05d}/**"],
                          "actions": ["pull", "push"]})  # fmt: skip
    return yaml.safe_dump({"acl": rules}, default_flow_style=None, sort_keys=False)


def grouped_groups() -> str:
    """The group file: "grouped" in the groups of the first `GROUPED` group rules of `acl`."""
    return "".join(f"team{i:05d}: grouped\n" for i in range(2, 2 * GROUPED + 2, 2))


def requests(registry: str) -> dict[str, tuple[str, str | None]]:
    """Each kind's path (and Accept), the blob being the seeded image's config."""
    request = urllib.request.Request(f"{registry}/v2/scale/app/manifests/latest",
                                     headers={"Accept": storm.MANIFEST_TYPE})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        digest = json.load(answer)["config"]["digest"]
    return {
        "ping": ("/v2/", None),
        "catalog": ("/v2/_catalog?n=100", None),
        "token": (f"/auth?service={TOKEN_SERVICE}&scope=repository:scale/app:pull", None),
        "manifest": ("/v2/scale/app/manifests/latest", storm.MANIFEST_TYPE),
        "blob": (f"/v2/scale/app/blobs/{digest}", None),
    }


def kinds_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    passwords = {caller: f"pw-{caller}-{os.getpid()}" for caller in CALLERS}
    htpasswd = setup.workdir / "htpasswd-kinds"
    # The measured user too: a regproxy is ready once it has answered that user's GET.
    replace_file(htpasswd, setup.users.lines + "".join(storm.htpasswd_lines(passwords, 10)))
    groups = setup.workdir / "groups-kinds"
    replace_file(groups, grouped_groups())
    token = {"issuer": "regproxy", "service": TOKEN_SERVICE, "key": str(setup.key),
             "certificate": str(setup.cert)}  # fmt: skip
    kinds = requests(setup.registry)
    sources = [(False, None), *([(True, setup.baseline)] if setup.baseline else [])]
    points: dict[tuple[bool, int], Point] = {}
    with ExitStack() as stack:
        proxies = {}
        for baseline, source in sources:
            for count in RULE_COUNTS:
                path = setup.workdir / f"acl-kinds-{count}.yaml"
                replace_file(path, acl(count))
                name = f"kinds-{'baseline' if baseline else 'now'}-{count}"
                proxies[baseline, count] = stack.enter_context(regproxy(
                    setup, processes, name, workers, source=source, acl=str(path),
                    htpasswd=str(htpasswd), groups=str(groups), token=token,
                ))  # fmt: skip
                points[baseline, count] = {"baseline": float(baseline), "rules": count}
        for kind in KINDS:
            target, accept = kinds[kind]
            for caller in CALLERS:
                authorization = basic(caller, passwords[caller])
                for proxy in proxies.values():  # a first answer: caches filled, not measured
                    warm(setup, proxy.url + target, authorization, accept)
                rates: dict[tuple[bool, int], list[float]] = {key: [] for key in proxies}
                for round_ in range(plan.rate_rounds):
                    keys = list(proxies)
                    for key in keys[round_ % 2 :] + keys[: round_ % 2]:
                        load = wrk(proxies[key].url + target, "GET", authorization,
                                   plan.rate_connections, plan.rate_seconds, accept)  # fmt: skip
                        rates[key].append(load.requests / load.seconds)
                for key, measured in rates.items():
                    points[key][f"{kind}/{caller}"] = sum(measured) / len(measured)
                log(f"{kind} by {caller}: " + ", ".join(
                    f"{'baseline' if b else 'now'} {n:,} rules {sum(r) / len(r):,.0f}/s"
                    for (b, n), r in rates.items()))  # fmt: skip
    return list(points.values())


def warm(setup: Setup, url: str, authorization: str, accept: str | None) -> None:
    """One request, its answer waited for (whatever its status)."""
    headers = {"Authorization": authorization, **({"Accept": accept} if accept else {})}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300, context=setup.context) as answer:
            answer.read()
    except urllib.error.HTTPError:
        pass  # a refusal is an answer too (the caller matched by no rule)


def basic(user: str, password: str) -> str:
    return aiohttp.encode_basic_auth(user, password)


def big_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    directory = setup.workdir / "big"
    directory.mkdir()
    htpasswd, groups, rules = directory / "htpasswd", directory / "groups", directory / "acl.yaml"
    log(f"{BIG['users']:,} users, {BIG['groups']:,} groups, {BIG['rules']:,} rules")
    replace_file(htpasswd, htpasswd_text(setup.users, BIG["users"]))
    replace_file(groups, "".join(group_lines(setup)))
    text = group_acl(BIG["rules"])
    replace_file(rules, text)
    grown = text + "- {users: [somebody], actions: [pull]}\n"
    settings = {"htpasswd": str(htpasswd), "groups": str(groups), "acl": str(rules)}
    points: list[Point] = []
    for baseline, source in [(False, None), *([(True, setup.baseline)] if setup.baseline else [])]:
        code = "baseline" if baseline else "now"
        checked = check_seconds(setup, directory, code, source, settings)
        with regproxy(setup, processes, f"big-{code}", workers, source=source,
                      **settings) as proxy:  # fmt: skip
            point = {"baseline": float(baseline), "check_s": checked,
                     "idle_rss_mib": idle_rss_mib(proxy)}  # fmt: skip
            point |= measure_reload(setup, proxy, rules, grown)
            replace_file(rules, text)
            point["startup_s"] = startup_median(setup, processes, proxy, f"big-{code}", source,
                                                **settings)  # fmt: skip
        if workers < CPUS:  # as shipped: one worker per CPU, each reading the files
            with regproxy(setup, processes, f"big-{code}-{CPUS}", CPUS, source=source,
                          **settings) as proxy:  # fmt: skip
                point["startup_cpus_s"] = startup_median(
                    setup, processes, proxy, f"big-{code}-{CPUS}", source, **settings
                )
        log(f"{code}: check {checked:.2f} s, startup {point['startup_s']:.2f} s "
            f"({point.get('startup_cpus_s', 0):.2f} s with {CPUS} workers), reload applied "
            f"after {point['applied_s']:.2f} s")  # fmt: skip
        points.append(point)
    return points


def group_lines(setup: Setup) -> Iterator[str]:
    """1,000 groups: each filler user in one, the measured users in every one."""
    measured = " ".join(setup.users.passwords)
    fillers = BIG["users"] - len(setup.users.passwords)
    for g in range(BIG["groups"]):
        members = " ".join(f"user{i:06d}" for i in range(g, fillers, BIG["groups"]))
        yield f"group{g:04d}: {members} {measured}\n"


def group_acl(count: int) -> str:
    """Rules for the groups (none for the measured user's repository), then its own last."""
    rules: list[dict[str, object]] = [
        {"groups": [f"group{i % BIG['groups']:04d}"], "repositories": [f"team{i:05d}/**"],
         "actions": ["pull", "push"]} for i in range(count - 1)
    ]  # fmt: skip
    rules.append({"users": [USER], "repositories": ["scale/**"], "actions": ["pull"]})
    return yaml.safe_dump({"acl": rules}, default_flow_style=None, sort_keys=False)


def check_seconds(
    setup: Setup, directory: Path, code: str, source: Path | None, settings: dict[str, str]
) -> float:
    """`regproxy check` of the deployment: seconds to its answer, the median of TIMES runs."""
    config = directory / f"check-{code}.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:5999", "upstream": setup.registry, **settings,
        "tls": {"cert": str(setup.cert), "key": str(setup.key)},
    }))  # fmt: skip
    runs = []
    for _ in range(TIMES):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(config)],
                              capture_output=True, text=True, **from_checkout(source))  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"regproxy check ({code}) failed: {done.stdout}{done.stderr}")
        runs.append(time.perf_counter() - started)
    log(f"  check {', '.join(f'{s:.2f}' for s in runs)} s")
    return statistics.median(runs)


def tables(curves: dict[str, list[Point]]) -> list[str]:
    lines: list[str] = []
    if kinds := curves.get("kinds"):
        lo, hi = RULE_COUNTS
        codes = sorted({p["baseline"] for p in kinds})
        header = " | ".join(f"{_code(b)}: {lo} / {hi:,} rules, req/s · ratio" for b in codes)
        lines += [
            f"Request kinds by rule count (one worker, wrk; the ratio is {hi:,} rules' req/s "
            f"over {lo}'s):",
            "",
            f"| request | caller matched by | {header} |",
            "|---|---|" + "---:|" * len(codes),
        ]
        point = {(p["baseline"], p["rules"]): p for p in kinds}
        for kind in KINDS:
            for caller in CALLERS:
                cells = []
                for code in codes:
                    key = f"{kind}/{caller}"
                    low, high = point[code, lo][key], point[code, hi][key]
                    ratio = f"{high / low:.2f}x" if low else "—"
                    cells.append(f"{number(low)} / {number(high)} · {ratio}")
                rule = {"none": "no rule", "grouped": f"the last rule, in {GROUPED:,} groups"
                        }.get(caller, f"the {caller} rule")  # fmt: skip
                lines.append(f"| {kind} | {rule} | {' | '.join(cells)} |")
        lines.append("")
    if big := curves.get("big"):
        lines += [
            f"{BIG['rules']:,} rules, {BIG['users']:,} htpasswd users, {BIG['groups']:,} groups:",
            "",
            f"| code | `regproxy check` s (median of {TIMES}) | startup s (median of {TIMES}) | "
            f"startup s, {CPUS} workers | idle RSS MiB "
            "| reload applied after s | longest wait during reload ms (quiet second) |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(f"| {_code(p['baseline'])} | {p['check_s']:.2f} | {p['startup_s']:.2f} | "
              f"{_seconds(p.get('startup_cpus_s'))} | {p['idle_rss_mib']:.0f} | "
              f"{p['applied_s']:.2f} | {number(p['reload_max_ms'])} "
              f"({number(p['quiet_max_ms'])}) |" for p in big),
            "",
        ]  # fmt: skip
    return lines


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _code(baseline: float) -> str:
    return "baseline" if baseline else "this checkout"
