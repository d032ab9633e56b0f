"""`make bench`, second part: how regproxy's cost grows with the size of the deployment.

One docker-registry and, for each point of each curve, a regproxy started afresh with that
deployment (one worker by default, access log off, so a request's cost is one process's):

- users: 1k / 10k / 100k htpasswd users: startup, RSS, authenticated manifest GETs (requests/s,
  CPU per request), and a reload (one user added) while requests are answered: the longest any
  request waited then, against a quiet second before;
- rules: 10 / 100 / 1,000 / 10,000 ACL rules, the user's rule last: the same measures, and a
  reload of the ACL (one rule added);
- catalog: `GET /v2/_catalog?n=100` over 10,000 repositories for a user who may see 1% of them
  (spread over the whole listing, 1,000 rules ahead of theirs), against the registry's own
  unfiltered call, and what other users' requests wait meanwhile: one catalog request at a time,
  then 16 clients listing it back to back for 2 s, then as many pinging (the control);
- connections: RSS per idle TLS keep-alive connection at 1k and 5k, and how long a fresh
  client waits for an answer meanwhile.

Prints a markdown report with issue 19's targets (met / not met) and writes
bench/results/scale-latest.{md,json,png} (and a timestamped copy of each).

    .venv/bin/python -m bench.scale [--quick] [--workers N] [--curves users,rules,...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml

from bench import storm
from bench.chart import logarithmic
from bench.fixtures import make_certificate
from bench.load import Load, wrk
from bench.plan import RESULTS
from bench.processes import (
    Processes,
    Usage,
    UsageSampler,
    compile_bytecode,
    last_lines,
    machine,
)
from bench.report import NO_CHART, Check, can_chart, number, save
from bench.targets import start_registry
from devtools.net import free_port
from devtools.processes import tree_cpu_seconds, tree_rss_kib

STARTUP_TIMEOUT = 120.0  # seconds: 10,000 rules take seconds to load
TIMES = 3  # starts (and `regproxy check` runs) per deployment: the median is reported
QUIET = 1.0  # seconds of probing before a reload or a catalog phase, to compare against
AFTER, AFTER_SEVERAL = 0.3, 2.0  # seconds of probing after a reload is logged (1, N workers)
PROBE_CONNECTIONS, PROBE_GAP = 2, 0.005  # the probe: 2 connections, 5 ms between requests
LISTING = 2.0  # seconds the concurrent clients list the catalog, long enough for the probe's p99
STALL_SLACK_MS = 5.0  # "a few milliseconds": what a reload or a catalog page may add
PAGE_MS = 50.0  # issue 24: one filtered catalog page over 10,000 repositories
COST_RATIO = 1.2  # per-request cost at the largest size over the smallest
USER, VIEWER = "bench", "viewer"  # the measured user; the catalog's 1% viewer
REPOSITORY = "scale/app"  # the image every manifest GET asks for
TEAM_SIZE = 100  # catalog repositories per top-level name: team000/app00 .. app99
VISIBLE = "*/app07"  # the viewer's 1%, spread over the whole listing


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    name: str
    users: tuple[int, ...]
    rules: tuple[int, ...]
    repositories: int  # in the registry, for the catalog curve
    catalog_rules: int  # rules ahead of the viewer's
    catalog_sequential: int  # catalog requests one at a time
    catalog_concurrent: int  # then this many at once
    connections: tuple[int, ...]
    rate_rounds: int  # wrk runs per point, round-robin over the points
    rate_seconds: int  # each run's length
    rate_connections: int
    note: str


PLANS = {
    "full": Plan(
        name="full", users=(1_000, 10_000, 100_000), rules=(10, 100, 1_000, 10_000),
        repositories=10_000, catalog_rules=1_000, catalog_sequential=3, catalog_concurrent=16,
        connections=(1_000, 5_000), rate_rounds=3, rate_seconds=2, rate_connections=16,
        note="",
    ),
    "quick": Plan(
        name="quick", users=(1_000, 10_000), rules=(10, 100, 1_000), repositories=1_000,
        catalog_rules=100, catalog_sequential=3, catalog_concurrent=16, connections=(200, 1_000),
        rate_rounds=2, rate_seconds=1, rate_connections=16,
        note="Quick run: up to 10k users, 1,000 rules, 1,000 repositories behind 100 rules, "
        "1,000 idle connections; 1 s rate runs.",
    ),
}  # fmt: skip


# --- files -----------------------------------------------------------------------------------

_CRYPT64 = bytes.maketrans(b"+/", b"./")


def fake_bcrypt() -> str:
    """A well-formed cost-10 bcrypt hash nobody knows a password for: as large in memory and
    as slow to parse as a real one, and free to make 100,000 times."""
    return "$2y$10$" + base64.b64encode(os.urandom(40)).translate(_CRYPT64).decode()[:53]


@dataclass(frozen=True)
class Users:
    """The htpasswd lines of the measured users (real hashes) and their passwords."""

    lines: str
    passwords: dict[str, str]

    @classmethod
    def make(cls) -> Users:
        passwords = {USER: secrets.token_urlsafe(12), VIEWER: secrets.token_urlsafe(12)}
        return cls("".join(storm.htpasswd_lines(passwords, 10)), passwords)

    def authorization(self, user: str = USER) -> str:
        return aiohttp.encode_basic_auth(user, self.passwords[user])


def htpasswd_text(users: Users, count: int, extra: int = 0) -> str:
    """`count` users in all: fillers first, the measured users last; `extra` more fillers."""
    fillers = count - len(users.passwords) + extra
    return "".join(f"user{i:06d}:{fake_bcrypt()}\n" for i in range(fillers)) + users.lines


def filler_rules(count: int, start: int = 0) -> list[dict[str, object]]:
    """Rules for other teams, none of which matches the measured users: half by group (the
    user is in none), half for any valid user on another project's repositories (a glob to
    test against every repository)."""
    rules: list[dict[str, object]] = []
    for i in range(start, start + count):
        if i % 2:
            rules.append({"repositories": [f"proj{i:05d}/**"], "actions": ["pull"]})
        else:
            rules.append({"groups": [f"team{i:05d}"], "repositories": [f"team{i:05d}/**"],
                          "actions": ["pull", "push"]})  # fmt: skip
    return rules


def acl_text(fillers: int, extra: int = 0, viewer: bool = False) -> str:
    """`fillers` (+ `extra`) rules, then the viewer's 1% (when asked) and the user's rule."""
    rules = filler_rules(extra, start=fillers) + filler_rules(fillers)
    if viewer:
        rules.append({"users": [VIEWER], "repositories": [VISIBLE], "actions": ["pull"]})
    rules.append({"users": [USER], "repositories": ["scale/**"], "actions": ["pull"]})
    return yaml.safe_dump({"acl": rules}, default_flow_style=None, sort_keys=False)


def replace_file(path: Path, text: str) -> None:
    """Write-then-rename, as htpasswd and editors do: the proxy never reads half a file."""
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text)
    scratch.chmod(0o644)
    scratch.rename(path)


# --- the registry and its data ---------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    workdir: Path
    cert: Path
    key: Path
    context: ssl.SSLContext
    registry: str  # http://127.0.0.1:PORT
    registry_data: Path
    users: Users
    notes: list[str] = field(default_factory=list)  # for the report: what went wrong where
    baseline: Path | None = None  # another checkout to run beside this one (--baseline)


def seed(setup: Setup, repositories: int) -> None:
    """One small image, pushed through the registry's API; then `repositories` more
    repositories holding it, written straight into the registry's storage (its link files
    copied: the registry cannot tell them from pushed ones, and 10,000 pushes would take
    minutes). One of them is read back through the API."""
    image = storm.make_image([64 * 1024], storm.random_block(64 * 1024))
    outcome = storm.run_storm(setup.registry, [None], None, storm.pushes([(REPOSITORY, image)]), 60)
    if outcome.completed != 1:
        raise RuntimeError(f"seeding the registry failed: {outcome.first_errors}")
    source = setup.registry_data / "repositories" / REPOSITORY
    links = [(p.relative_to(source), p.read_bytes()) for p in source.rglob("link")]
    names = catalog_names(repositories)
    if not names:
        return
    log(f"writing {len(names):,} repositories into the registry's storage")
    for name in names:
        for relative, content in links:
            path = setup.registry_data / "repositories" / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    check = storm.run_storm(setup.registry, [None], None, storm.pulls(names[-1], verify=True), 60)
    if check.completed != 1:
        raise RuntimeError(f"a written repository does not pull: {check.first_errors}")


def catalog_names(count: int) -> list[str]:
    return [f"team{i // TEAM_SIZE:03d}/app{i % TEAM_SIZE:02d}" for i in range(count)]


# --- one regproxy ----------------------------------------------------------------------------


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    workers: int
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def reloads(self) -> int:
        """`configuration reloaded` lines so far: one per reload (with several workers,
        worker 0 reports it)."""
        return (
            (self.directory / "stderr.log")
            .read_text(errors="replace")
            .count("configuration reloaded")
        )

    def tree_kib(self) -> int:
        return tree_rss_kib(self.process.pid)


@contextmanager
def regproxy(
    setup: Setup, processes: Processes, name: str, workers: int, source: Path | None = None,
    **settings: object,
) -> Iterator[Proxy]:  # fmt: skip
    """A regproxy with these settings on a free port (run from the checkout at `source`, if
    given); ready once it has answered an authenticated manifest GET (its startup time runs
    to then)."""
    directory = setup.workdir / name
    directory.mkdir()
    port = free_port()
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{port}", "upstream": setup.registry,
        "htpasswd": str(setup.workdir / "htpasswd"), "groups": None,
        "tls": {"cert": str(setup.cert), "key": str(setup.key)}, "workers": workers,
        "log_level": "info", "access_log": {"format": "off"}, **settings,
    }  # fmt: skip
    path = directory / "regproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    process = processes.start(name, [sys.executable, "-m", "proxy", "serve", "-c", str(path)],
                              directory, **from_checkout(source))  # fmt: skip
    proxy = Proxy(process, port, directory, workers)
    try:
        wait_ready(setup, proxy)
        proxy.startup_seconds = time.perf_counter() - started
        yield proxy
    finally:
        processes.stop(process)


def startup_median(
    setup: Setup, processes: Processes, proxy: Proxy, name: str, source: Path | None = None,
    **settings: object,
) -> float:  # fmt: skip
    """The median of `proxy`'s startup and TIMES - 1 more starts of the same deployment, each
    stopped once ready: one start on a busy 2-CPU machine can take half as long again."""
    again = []
    for index in range(1, TIMES):
        with regproxy(setup, processes, f"{name}-again{index}", proxy.workers, source=source,
                      **settings) as other:  # fmt: skip
            again.append(other.startup_seconds)
    log(f"  startup {', '.join(f'{s:.2f}' for s in [proxy.startup_seconds, *again])} s")
    return statistics.median([proxy.startup_seconds, *again])


def wait_ready(setup: Setup, proxy: Proxy) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    headers = {"Authorization": setup.users.authorization(), "Accept": storm.MANIFEST_TYPE}
    url = f"{proxy.url}/v2/{REPOSITORY}/manifests/latest"

    async def ready() -> bool:
        connector = aiohttp.TCPConnector(ssl=setup.context)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline:
                if proxy.process.poll() is not None:
                    return False
                try:
                    async with session.get(url, headers=headers) as response:
                        if response.status == 200:
                            return True
                        log(f"  not ready: {response.status} {await response.text()}")
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
        return False

    if not asyncio.run(ready()):
        raise RuntimeError(f"regproxy not ready:\n{last_lines(proxy.directory)}")


def rate(setup: Setup, plan: Plan, proxy: Proxy) -> tuple[Load, Usage]:
    """One wrk run of authenticated manifest GETs, with regproxy's CPU and RSS."""
    url = f"{proxy.url}/v2/{REPOSITORY}/manifests/latest"
    with UsageSampler(proxy.process.pid) as usage:
        load = wrk(url, "GET", setup.users.authorization(), plan.rate_connections,
                       plan.rate_seconds, accept=storm.MANIFEST_TYPE)  # fmt: skip
    if load.non_2xx or load.failed:
        log(f"  {load.non_2xx} non-2xx answers, {load.failed} failed requests")
    return load, usage


def combined(plan: Plan, runs: list[tuple[Load, Usage]]) -> Point:
    """Counts added up over the runs; latency percentiles are the runs' median. When most
    connections got no answer before a run ended, only an upper bound on the rate is known
    (`rps_at_most`), as in run.py."""
    requests = sum(load.requests for load, _ in runs)
    seconds = sum(load.seconds for load, _ in runs)
    usage = Usage()
    for _, one in runs:
        usage.include(one)
    bound = {}
    if requests < len(runs) * plan.rate_connections / 2:
        bound = {"rps_at_most": plan.rate_connections * len(runs) / seconds}
    return bound | {
        "rps": requests / seconds,
        "p50_ms": statistics.median(load.p50_ms for load, _ in runs),
        "p99_ms": statistics.median(load.p99_ms for load, _ in runs),
        "cpu_ms_per_request": usage.cpu_seconds * 1000 / max(requests, 1),
        "peak_rss_mib": usage.tree_kib / 1024,
        "errors": sum(load.non_2xx + load.failed for load, _ in runs),
    }


def idle_rss_mib(proxy: Proxy) -> float:
    """RSS once freed pages have been handed back (regproxy trims its heap every second)."""
    time.sleep(1.5)
    return proxy.tree_kib() / 1024


# --- the probe: other users' requests, timed -------------------------------------------------


@dataclass
class Probe:
    """Authenticated pings (answered by regproxy itself while the registry is up), on a few
    keep-alive connections with a short gap between requests: how long a request waits."""

    url: str
    authorization: str
    context: ssl.SSLContext
    samples: list[tuple[float, float, bool]] = field(default_factory=list)  # sent, s, ok
    failures: Counter[str] = field(default_factory=Counter)  # what went wrong, by kind
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.context, limit=PROBE_CONNECTIONS)
        headers = {"Authorization": self.authorization}
        async with aiohttp.ClientSession(connector=connector) as session:

            async def loop() -> None:
                while not self._stop.is_set():
                    sent = time.perf_counter()
                    try:
                        async with session.get(f"{self.url}/v2/", headers=headers) as response:
                            await response.read()
                        ok = response.status == 200
                        kind = str(response.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        ok, kind = False, type(exc).__name__
                    if not ok:
                        self.failures[kind] += 1
                    self.samples.append((sent, time.perf_counter() - sent, ok))
                    await asyncio.sleep(PROBE_GAP)

            await asyncio.gather(*(loop() for _ in range(PROBE_CONNECTIONS)))

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: float, end: float) -> dict[str, float]:
        """The requests in flight at some moment of [start, end]: p50, p99, max ms, and how
        many failed (no answer, or not a 200)."""
        during = [(s, ok) for sent, s, ok in self.samples if sent < end and sent + s > start]
        waits = sorted(s for s, _ in during) or [0.0]
        return {
            "p50_ms": statistics.median(waits) * 1000,
            "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000,
            "max_ms": waits[-1] * 1000,
            "requests": len(during),
            "failed": sum(1 for _, ok in during if not ok),
        }


def probing(setup: Setup, proxy: Proxy) -> Probe:
    return Probe(proxy.url, setup.users.authorization(), setup.context)


async def reload_stall(setup: Setup, proxy: Proxy, path: Path, text: str) -> dict[str, float]:
    """Probe for a quiet second, replace the file (in a thread: writing a large file must not
    stall the probe), wait until the reload is logged: how long it took to apply and the
    longest wait of a request meanwhile."""
    probe = probing(setup, proxy)
    task = asyncio.create_task(probe.run())
    quiet_start = time.perf_counter()
    await asyncio.sleep(QUIET)
    before, changed = proxy.reloads(), time.perf_counter()
    await asyncio.to_thread(replace_file, path, text)
    while proxy.reloads() == before:
        if time.perf_counter() - changed > STARTUP_TIMEOUT:
            raise RuntimeError(f"reload not applied:\n{last_lines(proxy.directory)}")
        await asyncio.sleep(0.01)
    applied = time.perf_counter()
    # One worker: its line is the reload done. Several: worker 0 logs it, the others may
    # still be at it: a longer look after.
    after = AFTER if proxy.workers == 1 else AFTER_SEVERAL
    await asyncio.sleep(after)
    probe.stop()
    await task
    quiet, during = probe.window(quiet_start, changed), probe.window(changed, applied + after)
    return {
        "applied_s": applied - changed,
        "quiet_max_ms": quiet["max_ms"],
        "quiet_p99_ms": quiet["p99_ms"],
        "reload_max_ms": during["max_ms"],
        "reload_p99_ms": during["p99_ms"],
    }


def measure_reload(setup: Setup, proxy: Proxy, path: Path, text: str) -> dict[str, float]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(reload_stall(setup, proxy, path, text))


# --- curves ----------------------------------------------------------------------------------

Point = dict[str, float]


@dataclass(frozen=True)
class Size:
    """One point of a size curve: the file that grows, its text, and its text one entry
    larger (made before any timing), and the settings that point it to regproxy."""

    count: int
    path: Path
    text: str
    grown: str
    settings: dict[str, Any]


def sized_curve(
    setup: Setup, plan: Plan, processes: Processes, workers: int, name: str,
    sizes: list[Size],
) -> list[Point]:  # fmt: skip
    """Every size's regproxy up at once (started one after another, each timed); manifest GETs
    round-robin over them, so whatever else the machine does hits each alike; then a reload
    of each while the probe runs."""
    points: list[Point] = []
    proxies: list[Proxy] = []
    with ExitStack() as stack:
        for size in sizes:
            log(f"{name}: {size.count:,}")
            replace_file(size.path, size.text)
            proxy = stack.enter_context(
                regproxy(setup, processes, f"{name}-{size.count}", workers, **size.settings)
            )
            proxies.append(proxy)
            startup = startup_median(setup, processes, proxy, f"{name}-{size.count}",
                                     **size.settings)  # fmt: skip
            points.append({name: size.count, "startup_s": startup,
                           "idle_rss_mib": idle_rss_mib(proxy)})  # fmt: skip
        log(f"{name}: manifest GETs, {plan.rate_rounds} x {plan.rate_seconds}s per size, "
            f"round-robin; then a reload of each")  # fmt: skip
        runs: list[list[tuple[Load, Usage]]] = [[] for _ in sizes]
        for round_ in range(plan.rate_rounds):
            order = list(range(len(sizes)))
            for i in order[round_ % len(order) :] + order[: round_ % len(order)]:
                runs[i].append(rate(setup, plan, proxies[i]))
        for point, proxy, size, done in zip(points, proxies, sizes, runs, strict=True):
            point |= combined(plan, done)
            point |= measure_reload(setup, proxy, size.path, size.grown)
    return points


def users_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    sizes = []
    for count in plan.users:
        path = setup.workdir / f"htpasswd-{count}"
        sizes.append(Size(count, path, htpasswd_text(setup.users, count),
                          htpasswd_text(setup.users, count, extra=1),
                          {"htpasswd": str(path)}))  # fmt: skip
    return sized_curve(setup, plan, processes, workers, "users", sizes)


def rules_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    """The user's rule last, behind count - 1 others."""
    sizes = []
    for count in plan.rules:
        path = setup.workdir / f"acl-{count}.yaml"
        sizes.append(Size(count, path, acl_text(count - 1), acl_text(count - 1, extra=1),
                          {"acl": str(path)}))  # fmt: skip
    return sized_curve(setup, plan, processes, workers, "rules", sizes)


def catalog_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    acl = setup.workdir / "acl-catalog.yaml"
    replace_file(acl, acl_text(plan.catalog_rules, viewer=True))
    visible = len([n for n in catalog_names(plan.repositories) if n.endswith("/app07")])
    log(f"catalog: {plan.repositories:,} repositories, {visible} visible to the viewer, "
        f"{plan.catalog_rules:,} rules ahead")  # fmt: skip
    points = []
    for baseline in [None, *([setup.baseline] if setup.baseline else [])]:
        name = "catalog-baseline" if baseline else "catalog"
        with (
            regproxy(setup, processes, name, workers, source=baseline, acl=str(acl)) as proxy,
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            point = runner.run(catalog_phases(setup, plan, proxy, min(visible, 100)))
        points.append({"repositories": plan.repositories, "rules": plan.catalog_rules,
                       "visible": visible, "catalog_concurrent": plan.catalog_concurrent,
                       "catalog_sequential": plan.catalog_sequential,
                       "baseline": float(baseline is not None), **point})  # fmt: skip
    return points


def from_checkout(source: Path | None) -> dict[str, Any]:
    """How to start regproxy from another checkout (`--baseline`): there, and first on the
    path (`python -m proxy` finds the package of its working directory first)."""
    if source is None:
        return {}
    return {"env": {**os.environ, "PYTHONPATH": str(source)}, "cwd": source}


async def catalog_phases(setup: Setup, plan: Plan, proxy: Proxy, expected: int) -> Point:
    """The registry's own page, then regproxy's filtered page one at a time and many at once,
    while the probe (another user) measures how long its requests wait."""
    query = "/v2/_catalog?n=100"
    timeout = aiohttp.ClientTimeout(total=STARTUP_TIMEOUT * 2)
    viewer = {"Authorization": setup.users.authorization(VIEWER)}
    connector = aiohttp.TCPConnector(ssl=setup.context, limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def timed(url: str, headers: dict[str, str]) -> tuple[float, str]:
            """Seconds, and "" or what was wrong with the answer."""
            started = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as response:
                    body = await response.read()
                wrong = "" if response.status == 200 else str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                body, wrong = b"", type(exc).__name__
            listed = len(json.loads(body)["repositories"]) if not wrong else 0
            if not wrong and url.startswith(proxy.url) and listed != expected:
                wrong = f"{listed} repositories listed, not {expected}"
            return time.perf_counter() - started, wrong

        direct = [await timed(setup.registry + query, {})
                  for _ in range(plan.catalog_sequential)]  # fmt: skip
        probe = probing(setup, proxy)
        task = asyncio.create_task(probe.run())
        await asyncio.sleep(QUIET / 2)  # connections up, before the quiet second
        quiet_start, cpu_start = time.perf_counter(), tree_cpu_seconds(proxy.process.pid)
        await asyncio.sleep(QUIET)
        one_start, cpu_one = time.perf_counter(), tree_cpu_seconds(proxy.process.pid)
        filtered = [await timed(proxy.url + query, viewer)]
        first_end, cpu_first_end = time.perf_counter(), tree_cpu_seconds(proxy.process.pid)
        filtered += [await timed(proxy.url + query, viewer)
                     for _ in range(plan.catalog_sequential - 1)]  # fmt: skip
        one_end, cpu_one_end = time.perf_counter(), tree_cpu_seconds(proxy.process.pid)
        await opened(session, proxy.url, viewer, plan.catalog_concurrent)  # in no window
        many_start = time.perf_counter()

        async def listing() -> list[tuple[float, str]]:
            """One client's pages, one after another until LISTING seconds have passed."""
            answers = [await timed(proxy.url + query, viewer)]
            while time.perf_counter() < many_start + LISTING:
                answers.append(await timed(proxy.url + query, viewer))
            return answers

        clients = await asyncio.gather(*(listing() for _ in range(plan.catalog_concurrent)))
        together = [answer for answers in clients for answer in answers]
        end = time.perf_counter()
        # The control: as many clients asking the cheapest request instead, as long.
        pinged = await asyncio.gather(*(pinging(session, proxy.url, viewer, end + LISTING)
                                        for _ in range(plan.catalog_concurrent)))  # fmt: skip
        pings_end = time.perf_counter()
        probe.stop()
        await task
    probe_cpu = (cpu_one - cpu_start) / (one_start - quiet_start)  # the probe's own, per second
    first_cpu = cpu_first_end - cpu_one - probe_cpu * (first_end - one_start)
    page_cpu = (cpu_one_end - cpu_first_end - probe_cpu * (one_end - first_end)) / max(
        1, len(filtered) - 1
    )
    windows = {
        "quiet": probe.window(quiet_start, one_start),
        "one": probe.window(one_start, one_end),
        "many": probe.window(many_start, end),
        "pings": probe.window(end, pings_end),
    }
    point: Point = {
        "direct_p50_ms": statistics.median(t for t, _ in direct) * 1000,
        "filtered_p50_ms": statistics.median(t for t, _ in filtered) * 1000,
        "filtered_first_ms": filtered[0][0] * 1000,  # the names read, the viewer decided
        "filtered_first_cpu_ms": first_cpu * 1000,  # regproxy's part of it
        "filtered_max_ms": max(t for t, _ in filtered) * 1000,
        "filtered_cpu_ms": page_cpu * 1000,
        "concurrent_p50_ms": statistics.median(t for t, _ in together) * 1000,
        "concurrent_max_ms": max(t for t, _ in together) * 1000,
        "concurrent_pages": len(together),
        "control_pings": sum(pinged),
    }
    for phase, answers in (("direct", direct), ("filtered", filtered), ("concurrent", together)):
        wrong = Counter(w for _, w in answers if w)
        point[f"{phase}_errors"] = sum(wrong.values())
        if wrong:
            setup.notes.append(f"catalog, {phase}: {sum(wrong.values())} of {len(answers)} "
                               f"answers wrong: {dict(wrong)}")  # fmt: skip
            log(f"  {setup.notes[-1]}")
    for phase, window in windows.items():
        point |= {f"probe_{phase}_{key}": value for key, value in window.items()}
    if probe.failures:
        setup.notes.append(f"catalog: other users' requests failed: {dict(probe.failures)}")
    return point


async def opened(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int
) -> None:
    """`count` keep-alive connections in the session's pool, each having answered a ping, for
    the concurrent pages: opened by them, their TLS handshakes (3-4 ms of CPU each, all at
    once) would hold the worker's loop by themselves, which is no catalog's cost."""

    async def ping() -> None:
        async with session.get(url + "/v2/", headers=headers) as response:
            await response.read()

    await asyncio.gather(*(ping() for _ in range(count)))


async def pinging(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], until: float
) -> int:
    """`GET /v2/` one after another until `until`: how many were answered 200."""
    answered = 0
    while time.perf_counter() < until:
        async with session.get(url + "/v2/", headers=headers) as response:
            await response.read()
            answered += response.status == 200
    return answered


def connections_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    log(f"connections: {', '.join(f'{n:,}' for n in plan.connections)} idle TLS keep-alives")
    settings: dict[str, Any] = {"timeouts": {"keepalive": 600}}  # idle for the whole curve
    with (
        regproxy(setup, processes, "connections", workers, **settings) as proxy,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        return runner.run(hold_connections(setup, plan, proxy))


async def hold_connections(setup: Setup, plan: Plan, proxy: Proxy) -> list[Point]:
    """Open idle keep-alive connections in steps (each has answered one authenticated
    request); at each step: RSS, and what a fresh client waits for its first answer."""
    request = (f"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
               f"Authorization: {setup.users.authorization()}\r\n\r\n").encode()  # fmt: skip
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(32)

    async def connect(keep: bool) -> float:
        async with gate:
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.port, ssl=setup.context, server_hostname="localhost"
            )
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"idle connection setup: {head[:40]!r}")
            if keep:
                held.append(writer)
            else:
                writer.close()
            return time.perf_counter() - started

    for _ in range(3):  # warm up: TLS, the credential cache, the upstream's ping
        await connect(keep=False)
    await asyncio.sleep(1.5)
    base = proxy.tree_kib() / 1024
    points: list[Point] = []
    try:
        for count in plan.connections:
            await asyncio.gather(*(connect(keep=True) for _ in range(count - len(held))))
            await asyncio.sleep(1.5)  # regproxy hands back freed pages every second
            rss = proxy.tree_kib() / 1024
            fresh = sorted([await connect(keep=False) for _ in range(20)])
            points.append({
                "connections": count, "rss_mib": rss, "base_rss_mib": base,
                "kib_per_connection": (rss - base) * 1024 / count,
                "fresh_p50_ms": statistics.median(fresh) * 1000, "fresh_max_ms": fresh[-1] * 1000,
            })  # fmt: skip
    finally:
        for writer in held:
            writer.close()
    return points


# Request kinds by rule count, and a large deployment: bench/kinds.py (which imports this).
def kinds_tables(curves: dict[str, list[Point]]) -> list[str]:
    from bench import kinds

    return kinds.tables(curves)


def kinds_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    from bench import kinds

    return kinds.kinds_curve(setup, plan, processes, workers)


def big_curve(setup: Setup, plan: Plan, processes: Processes, workers: int) -> list[Point]:
    from bench import kinds

    return kinds.big_curve(setup, plan, processes, workers)


Curve = Callable[[Setup, Plan, Processes, int], list[Point]]
# 1 / 2 / 3 replicas behind HAProxy sharing Redis are measured by bench/replicas.py (run by
# `make bench`); a storms-through-HAProxy curve would plug in here and is listed as not
# measured.
CURVES: dict[str, Curve | None] = {
    "users": users_curve,
    "rules": rules_curve,
    "catalog": catalog_curve,
    "kinds": kinds_curve,
    "big": big_curve,
    "connections": connections_curve,
    "replicas": None,
}


# --- report ----------------------------------------------------------------------------------


def checks(curves: dict[str, list[Point]]) -> list[Check]:
    """Issue 19's targets for the scale curves, as ratios and waits within this run."""
    out = []
    for name, unit in (("users", "users"), ("rules", "rules")):
        points = curves.get(name)
        if not points:
            continue
        low, high = points[0], points[-1]
        goal = f"per-request cost at {high[unit]:,.0f} {unit} ≤ {COST_RATIO}x the cost at " \
               f"{low[unit]:,.0f}"  # fmt: skip
        if "rps_at_most" in high:
            out.append(
                Check(
                    goal,
                    f"under {high['rps_at_most']:.0f} req/s against "
                    f"{low['rps']:,.0f}: most requests took longer than a run "
                    f"({high['cpu_ms_per_request']:,.0f} ms of CPU per answer)",
                    False,
                )
            )
        else:
            ratio = high["cpu_ms_per_request"] / low["cpu_ms_per_request"]
            out.append(
                Check(
                    goal,
                    f"{ratio:.2f}x CPU per request ("
                    f"{low['cpu_ms_per_request']:.3f} → "
                    f"{high['cpu_ms_per_request']:.3f} ms; "
                    f"{high['rps'] / low['rps']:.2f}x req/s)",
                    ratio <= COST_RATIO,
                )
            )
        added = high["reload_max_ms"] - high["quiet_max_ms"]
        out.append(Check(
            f"a reload at {high[unit]:,.0f} {unit} makes no request wait more than "
            f"{STALL_SLACK_MS:.0f} ms longer than in a quiet second",
            f"longest wait {high['reload_max_ms']:.1f} ms during the reload, "
            f"{high['quiet_max_ms']:.1f} ms quiet (+{added:.1f} ms); applied after "
            f"{high['applied_s']:.2f} s", added <= STALL_SLACK_MS,
        ))  # fmt: skip
    if catalog := curves.get("catalog"):
        point = catalog[0]
        one = point["probe_one_max_ms"] - point["probe_quiet_max_ms"]
        out.append(Check(
            f"a filtered catalog page ({point['repositories']:,.0f} repositories, "
            f"{point['rules']:,.0f} rules ahead) holds the event loop at most "
            f"{STALL_SLACK_MS:.0f} ms: other users' requests wait no longer",
            f"longest wait {point['probe_one_max_ms']:.1f} ms during single pages, "
            f"{point['probe_quiet_max_ms']:.1f} ms quiet (+{one:.1f} ms); a page takes "
            f"{point['filtered_p50_ms']:.0f} ms ({point['filtered_cpu_ms']:.0f} ms CPU), the "
            f"registry's own {point['direct_p50_ms']:.1f} ms",
            one <= STALL_SLACK_MS and not point["filtered_errors"] + point["probe_one_failed"],
        ))  # fmt: skip
        out.append(replace(
            concurrent_catalogs(point), goal="concurrent catalog requests do not delay other "
            f"users' requests (p99 within {STALL_SLACK_MS:.0f} ms of a quiet second's, every "
            "request answered)",
        ))  # fmt: skip
    return out


def concurrent_catalogs(point: Point) -> Check:
    """The probe's p99 while the concurrent clients listed, against the quiet second's."""
    many = point["probe_many_p99_ms"] - point["probe_quiet_p99_ms"]
    failed = point["probe_many_failed"] + point["concurrent_errors"]
    return Check(
        f"{point['catalog_concurrent']:.0f} concurrent catalogs add ≤ {STALL_SLACK_MS:.0f} ms to "
        "others' p99",
        f"p99 {point['probe_many_p99_ms']:.1f} ms (max {point['probe_many_max_ms']:.0f}) while "
        f"{point['catalog_concurrent']:.0f} clients listed ({point['concurrent_pages']:.0f} "
        f"pages), {point['probe_quiet_p99_ms']:.1f} ms quiet (+{many:.1f} ms); "
        f"{point['concurrent_errors']:.0f} of the pages and "
        f"{point['probe_many_failed']:.0f} other requests failed; as many clients pinging "
        f"instead ({point['control_pings']:.0f} pings): p99 {point['probe_pings_p99_ms']:.1f} ms",
        many <= STALL_SLACK_MS and not failed,
    )


def issue_24_checks(curves: dict[str, list[Point]]) -> list[Check]:
    """Issue 24's catalog targets: a filtered page's time, and what concurrent pages add to
    other users' p99 (the kinds curve's table holds its flatness at 10,000 rules)."""
    catalog = [p for p in curves.get("catalog", []) if not p["baseline"]]
    if not catalog:
        return []
    point = catalog[0]
    failed = point["filtered_errors"]
    page = Check(
        f"one filtered catalog page over {point['repositories']:,.0f} repositories ≤ "
        f"{PAGE_MS:.0f} ms",
        f"p50 {point['filtered_p50_ms']:.1f} ms of {point['catalog_sequential']:.0f} one at a "
        f"time ({point['filtered_cpu_ms']:.1f} ms CPU); the first (the registry's names read, "
        f"the viewer's visible ones decided) {point['filtered_first_ms']:.0f} ms "
        f"({point['filtered_first_cpu_ms']:.0f} ms of regproxy's CPU), the "
        f"registry's own unfiltered page {point['direct_p50_ms']:.0f} ms; "
        f"{point['catalog_concurrent']:.0f} clients listing at once p50 "
        f"{point['concurrent_p50_ms']:.0f} ms" + (f"; {failed:.0f} pages wrong" if failed else ""),
        point["filtered_p50_ms"] <= PAGE_MS and not failed,
    )
    return [page, concurrent_catalogs(point)]


def tables(curves: dict[str, list[Point]]) -> list[str]:
    lines: list[str] = []

    def sizes(name: str, unit: str) -> None:
        points = curves.get(name)
        if not points:
            return
        lines.extend([
            f"| {unit} | startup s (median of {TIMES}) | idle RSS MiB | req/s "
            "| CPU ms per request | p50 / p99 ms | reload applied after s "
            "| longest wait during reload ms (quiet second) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(f"| {p[name]:,.0f} | {p['startup_s']:.2f} | {p['idle_rss_mib']:.0f} | "
              f"{_rate(p)} | {p['applied_s']:.2f} | {number(p['reload_max_ms'])} "
              f"({number(p['quiet_max_ms'])}) |" for p in points),
            "",
        ])  # fmt: skip

    sizes("users", "htpasswd users")
    sizes("rules", "ACL rules (the user's last)")
    lines.extend(kinds_tables(curves))
    for p in curves.get("catalog", []):
        lines.extend([
            *(["Catalog, the same with the baseline checkout:"] if p["baseline"] else []),
            f"Catalog: {p['repositories']:,.0f} repositories, the viewer may pull "
            f"{p['visible']:,.0f} (1%, spread over the listing), {p['rules']:,.0f} rules ahead "
            "of theirs; `GET /v2/_catalog?n=100`.",
            "",
            "| | p50 ms | max ms | regproxy CPU ms per page | other users' requests "
            "meanwhile: p50 / p99 / max ms |",
            "|---|---:|---:|---:|---:|",
            f"| quiet (no catalog request) | | | | {_probe(p, 'quiet')} |",
            f"| registry, unfiltered | {number(p['direct_p50_ms'])}"
            f"{_failures(p, 'direct', p['catalog_sequential'])} | | | |",
            f"| regproxy, filtered, first page (names read, viewer decided) | "
            f"{number(p['filtered_first_ms'])} | | {number(p['filtered_first_cpu_ms'])} | |",
            f"| regproxy, filtered, one at a time | {number(p['filtered_p50_ms'])}"
            f"{_failures(p, 'filtered', p['catalog_sequential'])} | "
            f"{number(p['filtered_max_ms'])} | {number(p['filtered_cpu_ms'])} | "
            f"{_probe(p, 'one')} |",
            f"| regproxy, filtered, {p['catalog_concurrent']:.0f} clients listing for {LISTING:g} "
            f"s ({p['concurrent_pages']:.0f} pages) | {number(p['concurrent_p50_ms'])}"
            f"{_failures(p, 'concurrent', p['concurrent_pages'])}"
            f" | {number(p['concurrent_max_ms'])} | | {_probe(p, 'many')} |",
            f"| the control: {p['catalog_concurrent']:.0f} clients pinging for {LISTING:g} s "
            f"({p['control_pings']:.0f} pings) | | | | {_probe(p, 'pings')} |",
            "",
        ])  # fmt: skip
    if connections := curves.get("connections"):
        lines.extend([
            "| idle TLS keep-alive connections | RSS MiB (before: "
            f"{connections[0]['base_rss_mib']:.0f}) | KiB per connection | a fresh client's "
            "first answer, p50 / max ms |",
            "|---:|---:|---:|---:|",
            *(f"| {p['connections']:,.0f} | {p['rss_mib']:.0f} | {p['kib_per_connection']:.1f} "
              f"| {number(p['fresh_p50_ms'])} / {number(p['fresh_max_ms'])} |"
              for p in connections),
            "",
        ])  # fmt: skip
    return lines


def _rate(point: Point) -> str:
    """req/s, CPU per request, latency: a bound only when requests outlasted the runs."""
    if "rps_at_most" in point:
        return f"< {number(point['rps_at_most'])} | — | — / —"
    return (f"{point['rps']:,.0f} | {point['cpu_ms_per_request']:.3f} | "
            f"{number(point['p50_ms'])} / {number(point['p99_ms'])}")  # fmt: skip


def _probe(point: Point, phase: str) -> str:
    waits = " / ".join(number(point[f"probe_{phase}_{k}"]) for k in ("p50_ms", "p99_ms", "max_ms"))
    failed = point[f"probe_{phase}_failed"]
    return waits + (f" ({failed:.0f} of {point[f'probe_{phase}_requests']:.0f} failed)"
                    if failed else "")  # fmt: skip


def _failures(point: Point, phase: str, count: float) -> str:
    errors = point[f"{phase}_errors"]
    return f" ({errors:.0f} of {count:.0f} failed)" if errors else ""


def chart(plan: Plan, curves: dict[str, list[Point]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 4, figsize=(24, 10))
    for row, (name, unit) in enumerate((("users", "htpasswd users"), ("rules", "ACL rules"))):
        points = curves.get(name, [])
        xs = [p[name] for p in points]
        rated = [p for p in points if "rps_at_most" not in p]  # no cost where none is known
        cost, memory, stall = axes[row][0], axes[row][1], axes[row][2]
        twin(
            cost,
            [p[name] for p in rated],
            rated,
            ("cpu_ms_per_request", "CPU ms per request"),
            ("rps", "req/s"),
        )
        cost.set_title(f"authenticated manifest GETs by {unit}")
        twin(memory, xs, points, ("idle_rss_mib", "idle RSS MiB"), ("startup_s", "startup s"))
        memory.set_title(f"memory and startup by {unit}")
        stall.plot(xs, [p["reload_max_ms"] for p in points], "o-", label="during a reload")
        stall.plot(xs, [p["quiet_max_ms"] for p in points], "s--", label="quiet second")
        logarithmic(stall, "y")
        stall.set_title(f"longest wait of a request, ms, by {unit}")
        stall.legend(fontsize=8)
        for ax in (cost, memory, stall):
            logarithmic(ax, "x")
            ax.set_xticks(xs, [f"{x:,.0f}" for x in xs])
    catalog = axes[1][3]
    if measured := curves.get("catalog"):
        p = measured[0]
        bars = {
            "registry page": p["direct_p50_ms"],
            "filtered page": p["filtered_p50_ms"],
            f"filtered, {p['catalog_concurrent']:.0f} clients": p["concurrent_p50_ms"],
            "others' p99, quiet": p["probe_quiet_p99_ms"],
            "others' p99, 1 page": p["probe_one_p99_ms"],
            f"others' p99, {p['catalog_concurrent']:.0f} clients": p["probe_many_p99_ms"],
        }
        catalog.bar(range(len(bars)), list(bars.values()), color=plt.get_cmap("tab10")(2))
        catalog.set_xticks(range(len(bars)), list(bars), fontsize=7, rotation=20)
        logarithmic(catalog, "y")
        catalog.set_title(f"catalog, {p['repositories']:,.0f} repositories: ms (p50 / p99)")
    idle = axes[0][3]
    if steps := curves.get("connections"):
        xs = [p["connections"] for p in steps]
        idle.plot([0, *xs], [steps[0]["base_rss_mib"], *(p["rss_mib"] for p in steps)], "o-")
        idle.set_title("RSS MiB by idle TLS keep-alive connections")
    figure.suptitle(f"regproxy scale curves ({plan.name})")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def twin(
    ax: Any, xs: list[float], points: list[Point], left: tuple[str, str], right: tuple[str, str]
) -> None:
    """Two measures of the same points, on a left and a right scale from zero."""
    ax.plot(xs, [p[left[0]] for p in points], "o-", color="tab:blue")
    ax.set_ylabel(left[1], color="tab:blue")
    other = ax.twinx()
    other.plot(xs, [p[right[0]] for p in points], "s--", color="tab:orange")
    other.set_ylabel(right[1], color="tab:orange")
    for axis, key in ((ax, left[0]), (other, right[0])):
        axis.set_ylim(0, max((p[key] for p in points), default=0) * 1.2 or 1)


def report(
    plan: Plan, workers: int, curves: dict[str, list[Point]], notes: list[str], started: float,
    load_before: float,
) -> str:  # fmt: skip
    met, met_24 = checks(curves), issue_24_checks(curves)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    wall = time.monotonic() - started
    skipped = [name for name, curve in CURVES.items() if curve is None]
    not_measured = (
        f"Not measured here: {', '.join(skipped)} (request rates of 1, 2 and 3 replicas behind "
        "HAProxy are in bench/run.py's report, from bench/replicas.py)."
    )
    lines = [
        f"## regproxy scale curves ({plan.name}, {stamp})",
        "",
        f"{os.cpu_count()} CPUs ({platform.platform()}), load average {load_before:.1f} before "
        f"and {os.getloadavg()[0]:.1f} after: anything else running skews every number. "
        f"regproxy with {workers} worker(s), access log off, a fresh process per point; "
        f"manifest GETs: wrk, {plan.rate_connections} connections, {plan.rate_rounds} x "
        f"{plan.rate_seconds}s per point, round-robin over a curve's points (all up at once); "
        f"CPU is regproxy's whole tree. {wall:.0f}s in all. {plan.note}",
        "",
        *tables(curves),
        "Longest wait: the probe (another user's authenticated pings, which regproxy answers "
        f"itself, on {PROBE_CONNECTIONS} keep-alive connections, {PROBE_GAP * 1000:.0f} ms "
        "apart) measures every request in flight during the window, against the quiet second "
        "before. A reload is applied when it is first logged (file polling included); the "
        f"window runs {AFTER} s past that ({AFTER_SEVERAL} s with several workers).",
        "",
        not_measured if skipped else "",
        "",
        *(f"Note: {note}" for note in notes),
        *([""] if notes else []),
        "Targets of issue 19 (scale curves):",
        "",
        *(c.line for c in met),
        *(["", "Targets of issue 24 (scale curves):", ""] if met_24 else []),
        *(c.line for c in met_24),
    ]
    text = "\n".join(lines) + "\n"
    data = {
        "date": stamp,
        "plan": asdict(plan),
        "workers": workers,
        "wall_seconds": wall,
        "machine": machine(load_before),
        "curves": curves,
        "not_measured": skipped,
        "notes": notes,
        "checks": [asdict(c) for c in met],
        "checks_issue_24": [asdict(c) for c in met_24],
    }
    save("scale-", text, data, lambda path: chart(plan, curves, path))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument("--workers", type=int, default=1, help="regproxy workers (default 1)")
    parser.add_argument("--baseline", type=Path,
                        help="also run regproxy from this checkout (the catalog, kinds and "
                        "big curves), for before/after in one run")  # fmt: skip
    parser.add_argument("--curves", default=",".join(n for n, c in CURVES.items() if c),
                        help=f"comma-separated, of {','.join(CURVES)}")  # fmt: skip
    args = parser.parse_args(argv)
    names = [n for n in args.curves.split(",") if n]
    if not names or not set(names) <= set(CURVES):
        parser.error(f"--curves takes some of {','.join(CURVES)}")
    if unavailable := [n for n in names if CURVES[n] is None]:
        parser.error(f"not measurable yet: {', '.join(unavailable)} (see CURVES)")
    plan = PLANS["quick" if args.quick else "full"]
    if not can_chart():
        log(NO_CHART)  # said now, not only after the run
    for checkout in (Path.cwd(), *([args.baseline] if args.baseline else [])):
        compile_bytecode(checkout)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # In memory when it can be: 10,000 repositories are 200,000 files and directories, which a
    # disk mounted with `discard` takes a minute to delete.
    memory = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="regproxy-scale-", dir=memory if os.access(
        memory, os.W_OK) else None))  # fmt: skip
    processes = Processes()
    curves: dict[str, list[Point]] = {}
    try:
        cert, key, _ = make_certificate(workdir)
        context = ssl.create_default_context(cafile=str(cert))
        registry = start_registry(workdir / "registry", processes)
        data = workdir / "registry" / "data" / "docker" / "registry" / "v2"
        setup = Setup(workdir, cert, key, context, registry.url, data, Users.make(),
                      baseline=args.baseline.resolve() if args.baseline else None)  # fmt: skip
        replace_file(workdir / "htpasswd", htpasswd_text(setup.users, 10))  # unless a curve's own
        seed(setup, plan.repositories if {"catalog", "kinds"} & set(names) else 0)
        for name in names:
            curve = CURVES[name]
            assert curve is not None
            curves[name] = curve(setup, plan, processes, args.workers)
    finally:
        log("stopping what was started")
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(plan, args.workers, curves, setup.notes, started, load_before), end="")
    log(f"wrote {RESULTS}/scale-latest.md, .json (and .png) in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
