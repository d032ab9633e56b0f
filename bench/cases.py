"""The cases, run interleaved over the targets: rates, blob GETs, pushes and storms."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import storm as storm_module
from bench.fixtures import PULLER, PULLER_10, PUSHER, STORM_COST, Fixtures
from bench.load import Client, Load, ab, push, wrk
from bench.plan import MB, MIB, Plan, log
from bench.processes import Usage, UsageSampler, tool
from bench.stats import spread
from bench.targets import DIRECT, Target
from devtools.processes import tree_cpu_seconds

SETTLE_WINDOW, SETTLE_TIMEOUT = 0.1, 15.0  # seconds: idle check after each rate run
STORM_REPO = "storm/pull"  # the image every pull storm pulls, seeded once (direct)


@dataclass(frozen=True)
class RateCase:
    key: str
    title: str
    method: str
    user: str | None  # None: no credentials
    blob: bool  # the layer blob instead of /v2/
    concurrency: int


# key, title, method, user, blob: each at the plan's main concurrency
MAIN_RATE_CASES: tuple[tuple[str, str, str, str | None, bool], ...] = (
    ("anonymous", "GET /v2/ without credentials (401)", "GET", None, False),
    ("auth-cost5", "GET /v2/, bcrypt cost 5", "GET", PULLER, False),
    ("auth-cost10", "GET /v2/, bcrypt cost 10", "GET", PULLER_10, False),
    ("head-cost5", "HEAD blob, bcrypt cost 5", "HEAD", PULLER, True),
    ("head-cost10", "HEAD blob, bcrypt cost 10", "HEAD", PULLER_10, True),
)

RATE_KEYS = tuple(case[0] for case in MAIN_RATE_CASES)


@dataclass
class Result:
    case: str
    target: str
    metrics: dict[str, float]
    usage: Usage
    note: str = ""
    errors: dict[str, int] = field(default_factory=dict)  # storms: what stopped clients
    runs: list[float] = field(default_factory=list)  # the main value of each round, in order
    first_errors: tuple[str, ...] = ()  # storms: the first few, request by request


def sampled(target: Target) -> UsageSampler:
    """RSS and CPU of the target's process tree while the `with` block runs."""
    return UsageSampler(target.process.pid)


class Bench:
    """Runs the cases, interleaved over the targets, and collects `Result`s."""

    def __init__(
        self, plan: Plan, targets: dict[str, Target], fixtures: Fixtures, workdir: Path,
        profiles: Path | None = None,
    ) -> None:  # fmt: skip
        self.plan = plan
        self.targets = targets
        self.fixtures = fixtures
        self.workdir = workdir
        self.profiles = profiles  # --profile: py-spy flame graphs of regproxy go here
        self.clients = {name: Client(target, fixtures) for name, target in targets.items()}
        self.blob_path = f"/v2/bench/seed/blobs/{fixtures.layer_digest}"
        self.results: list[Result] = []
        self._rotation = 0

    @contextmanager
    def measured(self, name: str, case: str) -> Iterator[Usage]:
        """The target's usage while the block runs; with --profile, regproxy's stacks too."""
        with sampled(self.targets[name]) as usage, self.profiled(name, case):
            yield usage

    @contextmanager
    def profiled(self, name: str, case: str) -> Iterator[None]:
        """py-spy over regproxy and its workers, written as an SVG flame graph when stopped."""
        if self.profiles is None or name != "regproxy":
            yield
            return
        self.profiles.mkdir(parents=True, exist_ok=True)
        number = len(list(self.profiles.glob(f"{case}-*.svg"))) + 1
        output = self.profiles / f"{case}-{number}.svg"
        spy = subprocess.Popen(
            [tool("py-spy"), "record", "--pid", str(self.targets[name].process.pid),
             "--subprocesses", "--nonblocking", "--rate", "100", "--output", str(output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)  # attached before the case starts
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes the graph when interrupted
            spy.wait(timeout=60)

    def rotated(self, names: Sequence[str]) -> list[str]:
        """`names` in a different order on each call, so no target is always first or last."""
        self._rotation += 1
        shift = self._rotation % len(names)
        return [*names[shift:], *names[:shift]]

    def rate_cases(self) -> list[RateCase]:
        connections, chosen = self.plan.main_concurrency, self.plan.rate_cases
        if chosen is not None:
            return [RateCase(*case, connections) for case in MAIN_RATE_CASES if case[0] in chosen]
        return [
            *(RateCase(*case, connections) for case in MAIN_RATE_CASES),
            *(RateCase(f"sweep-c{n}", "GET /v2/, cost 5", "GET", PULLER, False, n)
              for n in self.plan.sweep),
        ]  # fmt: skip

    def check_answers(self) -> None:
        """Each target answers as configured, and serves the right bytes, before any timing."""
        for name, client in self.clients.items():
            checks: list[tuple[str, str, str | None, set[int]]] = [
                ("GET", "/v2/", PULLER, {200}),
                ("GET", "/v2/", PULLER_10, {200}),
                ("HEAD", self.blob_path, PULLER, {200}),
            ]
            if client.target.authenticates:  # challenges, and refuses a puller's upload
                checks.append(("GET", "/v2/", None, {401}))
                checks.append(("POST", "/v2/bench/denied/blobs/uploads/", PULLER, {401, 403}))
            for method, path, user, expected in checks:
                response = client.request(method, path, user)
                response.read()
                response.close()
                if response.status not in expected:
                    raise RuntimeError(f"{name}: {method} {path} as {user} answered "
                                       f"{response.status}, expected {expected}")  # fmt: skip
            client.verify_blob(
                self.blob_path, PULLER, self.fixtures.layer_size, self.fixtures.layer_digest
            )

    def settle(self, target: Target) -> None:
        """Wait until the target and the registry are idle: work a run leaves behind (bcrypt
        for requests whose client has gone) must not count against the next measurement."""
        roots = (target.process.pid, self.targets[DIRECT].process.pid)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        used = tree_cpu_seconds(*roots)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_WINDOW)
            used, before = tree_cpu_seconds(*roots), used
            if used - before < SETTLE_WINDOW / 5:  # under a fifth of a CPU: idle
                return
        log(f"  {target.name} still busy {SETTLE_TIMEOUT}s after the run")

    def run_rate(self, case: RateCase) -> None:
        plan = self.plan
        rounds, seconds, warmup = plan.rate_rounds, plan.rate_seconds, plan.rate_warmup
        log(f"{case.title}, {case.concurrency} connections: {rounds} x {seconds}s per target"
            + (f" after a {warmup}s warm-up" if warmup else ""))  # fmt: skip
        if warmup:  # not counted: caches filled before the first counted round
            for name in self.rotated(list(self.targets)):
                self.rate_run(case, name, warmup)
                self.settle(self.targets[name])
        loads: dict[str, list[Load]] = {name: [] for name in self.targets}
        usages = {name: Usage() for name in self.targets}
        for _ in range(rounds):
            for name in self.rotated(list(self.targets)):
                with self.measured(name, case.key) as usage:
                    load = self.rate_run(case, name, seconds)
                self.settle(self.targets[name])  # what is left behind is not the run's CPU
                loads[name].append(load)
                usages[name].include(usage)
        for name, runs in loads.items():
            self.results.append(self.rate_result(case, name, runs, usages[name]))

    def rate_run(self, case: RateCase, name: str, seconds: int) -> Load:
        """One run of the case against one target."""
        client = self.clients[name]
        url = client.target.url + (self.blob_path if case.blob else "/v2/")
        auth = client.authorization(case.user)
        if case.method == "HEAD":
            return ab(url, auth, case.concurrency, seconds)
        return wrk(url, case.method, auth, case.concurrency, seconds)

    def rate_result(self, case: RateCase, name: str, runs: list[Load], usage: Usage) -> Result:
        """Counts added up over the runs; the rate and the latency percentiles are the runs'
        median (each run's rate kept, for ratios paired by round)."""
        requests, seconds = sum(r.requests for r in runs), sum(r.seconds for r in runs)
        non_2xx, failed = sum(r.non_2xx for r in runs), sum(r.failed for r in runs)
        rates = [r.requests / r.seconds if r.seconds else 0.0 for r in runs]
        metrics = {
            "rps": statistics.median(rates),
            "rps_spread": spread(rates),
            "requests": requests,
            "seconds": seconds,
            "p50_ms": statistics.median(r.p50_ms for r in runs),
            "p99_ms": statistics.median(r.p99_ms for r in runs),
            "non_2xx": non_2xx,
            "failed": failed,
        }
        if requests:
            metrics["cpu_ms_per_request"] = usage.cpu_seconds * 1000 / requests
        if requests < len(runs) * case.concurrency / 2:
            # Most connections got no answer before the end: a request takes longer than a
            # run, and the count says little but that throughput is below this.
            metrics["rps_at_most"] = case.concurrency * len(runs) / seconds
        result = Result(case.key, name, metrics, usage, runs=rates)
        refused = requests if case.user is None and self.targets[name].authenticates else 0
        if non_2xx != refused or failed:
            result.note = f"{non_2xx} non-2xx answers (expected {refused}), {failed} failed"
            log(f"  {name}: {result.note}")
        return result

    def run_get(self) -> None:
        size = self.fixtures.layer_size
        log(f"GET of the {size / MIB:.0f} MiB blob: {self.plan.get_runs} runs per target")
        seconds: dict[str, list[float]] = {name: [] for name in self.targets}
        usages = {name: Usage() for name in self.targets}
        for _ in range(self.plan.get_runs):
            for name in self.rotated(list(self.targets)):
                with self.measured(name, "get-blob") as usage:
                    seconds[name] += self.downloads(name, 1)
                usages[name].include(usage)
        for name, runs in seconds.items():
            rates = [size / s / MB for s in runs]
            gigabytes = len(runs) * size / 1e9
            metrics = {"mbps": statistics.median(rates), "mbps_min": min(rates),
                       "mbps_max": max(rates), "runs": len(runs), "mbps_spread": spread(rates),
                       "cpu_s_per_gb": usages[name].cpu_seconds / gigabytes}  # fmt: skip
            self.results.append(Result("get-blob", name, metrics, usages[name], runs=rates))

    def downloads(self, name: str, count: int) -> list[float]:
        """`count` concurrent curl GETs of the blob; each one's seconds, length checked."""
        client = self.clients[name]
        argv = [tool("curl"), "--silent", "--show-error", "--output", "/dev/null",
                "--write-out", "%{http_code} %{size_download} %{time_total}",
                "--header", f"Authorization: {client.authorization(PULLER)}",
                "--cacert", str(self.fixtures.cert),
                client.target.url + self.blob_path]  # fmt: skip
        running = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(count)]
        seconds = []
        for process in running:
            out, _ = process.communicate()
            status, size, elapsed = out.split()
            if process.returncode or status != "200" or int(size) != self.fixtures.layer_size:
                raise RuntimeError(
                    f"{name}: curl GET of the blob: {out!r}, exit {process.returncode}"
                )
            seconds.append(float(elapsed))
        return seconds

    def run_parallel_gets(self) -> None:
        """Front ends only: how RSS grows with concurrent large downloads."""
        size = self.fixtures.layer_size
        fronts = [name for name in self.targets if name != DIRECT]
        for count in self.plan.parallel_downloads:
            log(f"{count} concurrent GETs of the {size / MIB:.0f} MiB blob per front end")
            for name in self.rotated(fronts):
                with sampled(self.targets[name]) as usage:
                    start = time.perf_counter()
                    self.downloads(name, count)
                    elapsed = time.perf_counter() - start
                metrics = {"aggregate_mbps": count * size / elapsed / MB,
                           "cpu_s_per_gb": usage.cpu_seconds / (count * size / 1e9)}  # fmt: skip
                self.results.append(Result(f"parallel-{count}", name, metrics, usage))

    def run_pushes(self) -> None:
        log(f"skopeo push of the image: {self.plan.push_runs} runs per target")
        seconds: dict[str, list[float]] = {name: [] for name in self.targets}
        usages = {name: Usage() for name in self.targets}
        for run in range(self.plan.push_runs):
            for name in self.rotated(list(self.targets)):
                # A new repository each time: the registry has the blob, but not linked there,
                # so every push uploads all of it.
                with sampled(self.targets[name]) as usage:
                    repository = f"bench/{name}-{run}"
                    pushed = push(self.targets[name], self.fixtures, repository, self.workdir)
                    seconds[name].append(pushed)
                usages[name].include(usage)
        for name, runs in seconds.items():
            metrics = {"seconds": statistics.median(runs), "seconds_min": min(runs),
                       "seconds_max": max(runs), "runs": len(runs),
                       "cpu_s_per_push": usages[name].cpu_seconds / len(runs)}  # fmt: skip
            self.results.append(Result("push", name, metrics, usages[name], runs=runs))

    # --- storms: many clients at once, each its own user (bench/storm.py) --------------------

    def storm(
        self, name: str, users: Sequence[str], work: storm_module.Work
    ) -> storm_module.Outcome:
        """One storm against one target: a client per user, all at once."""
        target = self.targets[name]
        credentials = [(user, self.fixtures.passwords[user]) for user in users]
        context = self.clients[name].context if target.tls else None
        return storm_module.run_storm(
            target.url, credentials, context, work, self.plan.storm.timeout
        )

    def run_storms(self) -> None:
        plan = self.plan.storm
        block = storm_module.random_block(max(round(mb * MB) for mb in plan.pull_layers_mb))
        image = storm_module.make_image([round(mb * MB) for mb in plan.pull_layers_mb], block)
        log(f"storms: seeding an image of {len(image.layers)} layers, {image.size / MB:.0f} MB "
            f"in all (direct)")  # fmt: skip
        self.expect_storm(DIRECT, [PUSHER], storm_module.pushes([(STORM_REPO, image)]))
        small = storm_module.make_image([MIB // 4] * 2, block)
        for name in self.targets:  # the protocol works through each, bytes checked (untimed)
            self.expect_storm(name, [PULLER], storm_module.pulls(STORM_REPO, verify=True))
            self.expect_storm(name, [PUSHER], storm_module.pushes([(f"storm/check-{name}", small)]))
        pulls = storm_module.pulls(STORM_REPO)
        for clients in plan.pull_clients:
            self.run_storm(f"pull-{clients}", f"pull storm, {clients} clients", lambda _: pulls)
        sizes = [kib * 1024 for kib in plan.push_layers_kib]

        def pushes(name: str) -> storm_module.Work:
            """Distinct images for each target: none of their blobs is in the registry yet."""
            return storm_module.pushes(
                [(f"storm/{name}-{i:02d}", storm_module.make_image(sizes, block))
                 for i in range(plan.push_clients)]
            )  # fmt: skip

        self.run_storm(
            f"push-{plan.push_clients}", f"push storm, {plan.push_clients} clients", pushes
        )

    def expect_storm(self, name: str, users: Sequence[str], work: storm_module.Work) -> None:
        outcome = self.storm(name, users, work)
        if outcome.completed != outcome.clients:
            raise RuntimeError(f"{name}: storm client check failed: {outcome.first_errors}")

    def run_storm(
        self, case: str, title: str, work_for: Callable[[str], storm_module.Work]
    ) -> None:
        """One storm case against every target in turn, each with fresh work (`work_for`)."""
        users = self.fixtures.storm_users[case]
        log(f"{title}: every target in turn")
        for name in self.rotated(list(self.targets)):
            work = work_for(name)
            throttled = self.throttled_logins(name)
            # What one login costs any front end right now: the storm's floor (bench/stats.py).
            check = storm_module.check_seconds(STORM_COST)
            with self.measured(name, case) as usage:
                outcome = self.storm(name, users, work)
            self.settle(self.targets[name])
            result = storm_result(case, name, outcome, usage)
            result.metrics |= {"bcrypt_check_s": check, "cpus": os.cpu_count() or 1}
            throttled = self.throttled_logins(name) - throttled
            result.metrics["throttled_logins"] = throttled
            if throttled:
                lines = f"{throttled} `throttled login` lines in its log"
                result.note = f"{result.note} ({lines})" if result.note else lines
            self.results.append(result)
            log(f"  {name}: {outcome.seconds:.2f}s, {outcome.completed} of {outcome.clients} "
                f"completed {dict(outcome.errors) or ''}")  # fmt: skip

    def throttled_logins(self, name: str) -> int:
        """regproxy's `throttled login` warnings so far (0 for other targets)."""
        path = self.workdir / name / "stderr.log"
        if name != "regproxy" or not path.exists():
            return 0
        return path.read_text(errors="replace").count("throttled login")

    def run(self, sections: Sequence[str]) -> None:
        log("seeding the registry with the image (skopeo, direct)")
        push(self.targets[DIRECT], self.fixtures, "bench/seed", self.workdir)
        self.check_answers()
        if "rate" in sections:
            for case in self.rate_cases():
                self.run_rate(case)
        if "get" in sections:
            self.run_get()
            self.run_parallel_gets()
        if "push" in sections:
            self.run_pushes()
        if "storm" in sections:
            self.run_storms()


def storm_result(case: str, name: str, outcome: storm_module.Outcome, usage: Usage) -> Result:
    metrics = {
        "seconds": outcome.seconds,
        "clients": outcome.clients,
        "completed": outcome.completed,
        "requests": outcome.requests,
        "p50_ms": outcome.p50_ms,
        "p99_ms": outcome.p99_ms,
        "errors": sum(outcome.errors.values()),
        "megabytes": outcome.megabytes,
        "cpu_s": usage.cpu_seconds,
        "generator_cpu_s": outcome.generator_cpu_seconds,
        "generator_cores": outcome.generator_cpu_share,
    }
    result = Result(case, name, metrics, usage, errors=outcome.errors,
                    first_errors=outcome.first_errors)  # fmt: skip
    if outcome.errors or outcome.completed != outcome.clients:
        stops = ", ".join(f"{kind} x{count}" for kind, count in sorted(outcome.errors.items()))
        result.note = f"{outcome.completed} of {outcome.clients} completed, stopped by {stops}"
        log(f"  {name}: first errors: {'; '.join(outcome.first_errors)}")
    return result


def sweep_keys(plan: Plan) -> list[tuple[int, str]]:
    """(connections, case) of the sweep, the main cost-5 case included, in order."""
    points = [(n, f"sweep-c{n}") for n in plan.sweep] + [(plan.main_concurrency, "auth-cost5")]
    return sorted(points)


def usage_by_downloads(plan: Plan, results: list[Result], target: str) -> list[tuple[int, Usage]]:
    """Usage by number of concurrent blob GETs: the GET case is 1."""
    by_key = {(r.case, r.target): r.usage for r in results}
    cases = [(1, "get-blob")] + [(n, f"parallel-{n}") for n in plan.parallel_downloads]
    return [(n, usage) for n, case in cases if (usage := by_key.get((case, target))) is not None]


MAIN_METRICS = ("rps", "mbps", "seconds")  # a result has one: requests/s, MB/s or a duration


def main_key(result: Result) -> str:
    return next(key for key in MAIN_METRICS if key in result.metrics)


def main_value(result: Result) -> float:
    return result.metrics[main_key(result)]
