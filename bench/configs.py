"""`make bench`'s configs case: the peak RSS of regproxy's whole process tree per configuration
(the recipe, then with `ldap:`, `oidc:` or `state: {backend: redis}`), at rest and under
authenticated load, against issue 24's 48 MiB per worker.

    .venv/bin/python -m bench.configs [--quick] [--workers N]   # on its own
    (bench/run.py calls run_case() after its other cases, with its registry and files)

Each configuration is the bench's regproxy (bench/templates/regproxy.yaml) with one section
added, its backend real and on loopback: Debian's slapd (devtools/slapd.py), an OIDC issuer
over HTTPS (devtools/oidc_issuer.py), a redis-server. Its user logs in through that backend:
an LDAP user, a workload token as the Basic password, an htpasswd user with Redis holding the
shared state. At rest: once two anonymous and two authenticated requests have been answered,
each on a connection of its own, and a few seconds have passed. Under load: wrk's
authenticated `GET /v2/` at 64 and at 256 connections, the tree sampled throughout.
Everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import replicas
from bench.fixtures import PULLER, Fixtures
from bench.load import Load, wrk
from bench.plan import RESULTS, log
from bench.processes import Processes, Usage, UsageSampler, wait_for_port
from bench.targets import render
from devtools.net import free_port
from devtools.oidc_issuer import Issuer
from devtools.processes import tree_rss_kib
from devtools.slapd import GROUPS, PASSWORDS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, Slapd

TOOLS = ("slapd", "ldapadd", "redis-server")  # Debian's, which `make bench` installs
CONNECTIONS = (64, 256)
TARGET_MIB = 48  # per worker, the whole tree (issue 24)
SETTLE_SECONDS = 3.0  # after the first requests, before the RSS at rest is read
LDAP_USER = "alice"


@dataclass(frozen=True)
class Configuration:
    """One row: the section added to the bench's regproxy.yaml, and its user's credentials."""

    name: str
    section: str
    authorization: str


@dataclass
class Row:
    """What one configuration measured (MiB, and the load that ran)."""

    name: str
    rest_mib: float
    peak_mib: dict[int, float]  # connections -> peak RSS of the tree
    largest_mib: dict[int, float]  # connections -> peak RSS of its largest process
    requests_per_second: dict[int, float]
    errors: int


@contextlib.contextmanager
def configurations(workdir: Path, fixtures: Fixtures, processes: Processes) -> Iterator[
    list[Configuration]
]:  # fmt: skip
    """The four configurations, their backends running until the block ends."""
    setup = replicas.Setup(workdir, fixtures, "", processes)
    basic = setup.authorization  # a Basic header: (user, password)
    puller = basic(PULLER)
    redis_port = replicas.start_redis(setup)
    issuer = Issuer(workdir / "issuer").start()
    try:
        with Slapd(workdir / "slapd") as slapd:
            ldap = (
                f"ldap:\n  url: {slapd.url}\n  bind_dn: {SERVICE_DN}\n"
                f"  bind_password: {SERVICE_PASSWORD}\n  user_base: {PEOPLE}\n"
                '  user_filter: "(uid={user})"\n  member_of_attribute: memberOf\n'
                f"  group_base: {GROUPS}\n"
            )
            redis = (
                "state:\n  backend: redis\n"
                f"  url: redis://127.0.0.1:{redis_port}/0\n  key_prefix: 'configs:'\n"
            )
            # An hour: a token outlives the case (the issuer's default is 5 minutes).
            token = issuer.token(exp=int(time.time()) + 3600)
            yield [
                Configuration("htpasswd and groups (the recipe)", "", puller),
                Configuration("and `ldap:` (slapd)", ldap, basic(LDAP_USER, PASSWORDS[LDAP_USER])),
                Configuration("and `oidc:` (one issuer)", issuer.config(), basic("oidc", token)),
                Configuration("and `state: {backend: redis}`", redis, puller),
            ]
    finally:
        issuer.close()


@contextlib.contextmanager
def regproxy(
    workdir: Path, fixtures: Fixtures, registry: str, processes: Processes, workers: int,
    configuration: Configuration,
) -> Iterator[tuple[int, int]]:  # fmt: skip
    """The bench's regproxy with `configuration`'s section: (its port, its root PID)."""
    directory = Path(tempfile.mkdtemp(prefix="config-", dir=workdir))
    port = free_port()
    values = {
        "dir": directory, "listen": f"127.0.0.1:{port}", "registry": registry,
        "htpasswd": fixtures.htpasswd, "groups": fixtures.groups, "cert": fixtures.cert,
        "key": fixtures.key, "workers": workers, "cache_ttl": 10,
    }  # fmt: skip
    config = render("regproxy.yaml", directory / "regproxy.yaml", values)
    with config.open("a") as file:
        file.write(configuration.section)
    argv = [sys.executable, "-m", "proxy", "serve", "-c", str(config)]
    process = processes.start(f"regproxy ({configuration.name})", argv, directory)
    try:
        wait_for_port(port, process, "regproxy", directory)
        yield port, process.pid
    finally:
        processes.stop(process)


def answer(port: int, context: ssl.SSLContext, authorization: str | None) -> int:
    """The status of one `GET /v2/` on a connection of its own."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        headers = {"Authorization": authorization} if authorization else {}
        connection.request("GET", "/v2/", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def until_answered(port: int, context: ssl.SSLContext, configuration: Configuration) -> None:
    """The first requests: two anonymous (401), two as the configuration's user (200)."""
    user = configuration.authorization
    for authorization, expected in ((None, 401), (None, 401), (user, 200), (user, 200)):
        status = answer(port, context, authorization)
        if status != expected:
            raise RuntimeError(f"{configuration.name}: GET /v2/ answered {status}, not {expected}")


def measure(
    port: int, root: int, configuration: Configuration, context: ssl.SSLContext,
    seconds: int, rounds: int,
) -> Row:  # fmt: skip
    until_answered(port, context, configuration)
    time.sleep(SETTLE_SECONDS)  # what the first requests left settles (a figure, not a check)
    rest = tree_rss_kib(root) / 1024
    row = Row(configuration.name, rest, {}, {}, {}, 0)
    url = f"https://127.0.0.1:{port}/v2/"
    for connections in CONNECTIONS:
        usage, loads = Usage(), []
        for _ in range(rounds):
            with UsageSampler(root) as sampled:
                loads.append(wrk(url, "GET", configuration.authorization, connections, seconds))
            usage.include(sampled)
        row.peak_mib[connections] = usage.tree_kib / 1024
        row.largest_mib[connections] = usage.worker_kib / 1024
        row.requests_per_second[connections] = rate(loads)
        row.errors += sum(load.non_2xx + load.failed for load in loads)
    return row


def rate(loads: list[Load]) -> float:
    return sum(load.requests for load in loads) / sum(load.seconds for load in loads)


def run_case(
    workdir: Path, fixtures: Fixtures, registry: str, processes: Processes, workers: int,
    quick: bool,
) -> str:  # fmt: skip
    """Every configuration in turn; the markdown report (also written under bench/results/)."""
    seconds, rounds = (1, 1) if quick else (3, 2)
    context = ssl.create_default_context(cafile=str(fixtures.cert))
    rows = []
    backends = workdir / "configs"
    backends.mkdir()
    with configurations(backends, fixtures, processes) as listed:
        for configuration in listed:
            log(f"configs: {configuration.name}, {rounds} x {seconds}s per connection count")
            running = regproxy(workdir, fixtures, registry, processes, workers, configuration)
            with running as (port, root):
                rows.append(measure(port, root, configuration, context, seconds, rounds))
    return report(rows, workers, seconds, rounds)


def report(rows: list[Row], workers: int, seconds: int, rounds: int) -> str:
    limit = TARGET_MIB * workers
    head = " | ".join(f"peak, {n} connections" for n in CONNECTIONS)
    lines = [
        "## Peak RSS per configuration",
        "",
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; regproxy with "
        f"{workers} workers; MiB of the whole process tree (its largest process in "
        f"parentheses); at rest after four requests and {SETTLE_SECONDS:g} s (a worker none "
        "of them reached has not yet used its backend), then wrk's "
        f"authenticated `GET /v2/`, {rounds} x {seconds}s per connection count. Issue 24's "
        f"target: ≤ {TARGET_MIB} MiB per worker, {limit} MiB for the tree.",
        "",
        f"| configuration | at rest | {head} | req/s at {CONNECTIONS[0]} |",
        "|---|---:|" + "---:|" * len(CONNECTIONS) + "---:|",
    ]
    for row in rows:
        flag = f" ! ({row.errors})" if row.errors else ""
        peaks = " | ".join(
            f"{row.peak_mib[n]:.1f} ({row.largest_mib[n]:.1f}){over(row.peak_mib[n], limit)}"
            for n in CONNECTIONS
        )
        lines.append(
            f"| {row.name}{flag} | {row.rest_mib:.1f} | {peaks} | "
            f"{row.requests_per_second[CONNECTIONS[0]]:,.0f} |"
        )
    lines += [
        "",
        f"✗: over {limit} MiB. ! (N): N requests failed or answered other than 200; at 256 "
        "connections, all of one user, 429s where the kernel handed one worker more of them "
        "than that user's fair share of requests in flight (`limits.per_user`, 128 a worker).",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "configs.md").write_text(text)
    data = {"workers": workers, "seconds": seconds, "rounds": rounds,
            "rows": [asdict(row) for row in rows]}  # fmt: skip
    (RESULTS / "configs.json").write_text(json.dumps(data, indent=2) + "\n")
    return text


def over(mib: float, limit: float) -> str:
    return " ✗" if mib > limit else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs, one round")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="regproxy worker processes (default: the number of CPUs)")  # fmt: skip
    args = parser.parse_args()
    case = functools.partial(run_case, workers=args.workers, quick=args.quick)
    return replicas.run_alone("configs", case)


if __name__ == "__main__":
    sys.exit(main())
