"""`make bench`'s replicas case: regproxy replicas behind HAProxy on this machine, sharing one
redis-server (`state: {backend: redis}`), and the Redis commands each kind of request costs.

    .venv/bin/python -m bench.replicas [--quick]   # on its own, with a registry of its own
    (bench/run.py calls run_case() after its other cases, with its registry and files)

Rates: one replica reached directly, then 1, 2 and 3 replicas behind HAProxy (TCP, round
robin), one worker each: authenticated `GET /v2/` (bcrypt cost 5, wrk) and blob `HEAD`s (ab),
64 connections. Commands: with `redis-cli monitor` recording, K requests of each kind sent to
one replica between two markers, and the commands in between counted; the stream follower's
XREAD and the users' version poll run whatever the requests do, and are counted per second
while idle. Everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.fixtures import PULLER, PUSHER, Fixtures, make_fixtures
from bench.load import Load, ab, push, wrk
from bench.plan import PLANS, RESULTS, log
from bench.processes import Processes, tool, wait_for_port
from bench.targets import render, start_registry
from devtools.net import free_port
from proxy.authn.credentials import hash_password

CONFIGS = (("1 replica, direct", 1, False), *((f"{n} behind HAProxy", n, True) for n in (1, 2, 3)))
CONNECTIONS = 64
PREFIX = "bench:"
BACKGROUND = ("XREAD", "GET " + PREFIX + "users:version")  # not caused by a request
IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class Setup:
    """What run.py (or main) hands over: its files and registry."""

    workdir: Path
    fixtures: Fixtures
    registry: str  # HOST:PORT of the seeded docker-registry
    processes: Processes  # everything started is stopped by PID at the end

    def authorization(self, user: str, password: str | None = None) -> str:
        secret = password if password is not None else self.fixtures.passwords[user]
        return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()

    @property
    def blob_path(self) -> str:
        return f"/v2/bench/seed/blobs/{self.fixtures.layer_digest}"


# --- processes -------------------------------------------------------------------------------


def start_redis(setup: Setup) -> int:
    directory = setup.workdir / "redis"
    directory.mkdir()
    port = free_port()
    argv = [tool("redis-server"), "--bind", "127.0.0.1", "--port", str(port),
            "--dir", str(directory), "--save", "", "--appendonly", "no"]  # fmt: skip
    process = setup.processes.start("redis-server", argv, directory)
    wait_for_port(port, process, "redis-server", directory)
    return int(port)


@contextmanager
def replicas(setup: Setup, count: int, redis_port: int) -> Iterator[list[int]]:
    """`count` replicas sharing the Redis; their ports. Stopped when the block ends."""
    started, ports = [], []
    secret = setup.workdir / "regproxy.secret"  # shared: replicas accept each other's uploads
    if not secret.exists():
        secret.write_text(secrets.token_hex(32) + "\n")
    try:
        for index in range(count):
            directory = Path(tempfile.mkdtemp(prefix=f"replica{index}-", dir=setup.workdir))
            port = free_port()
            values = {
                "dir": directory, "listen": f"127.0.0.1:{port}", "registry": setup.registry,
                "htpasswd": setup.fixtures.htpasswd, "groups": setup.fixtures.groups,
                "cert": setup.fixtures.cert, "key": setup.fixtures.key, "redis_port": redis_port,
                "secret_file": secret,
            }  # fmt: skip
            config = render("regproxy-replica.yaml", directory / "regproxy.yaml", values)
            argv = [sys.executable, "-m", "proxy", "serve", "-c", str(config)]
            process = setup.processes.start(f"replica {index}", argv, directory)
            started.append(process)
            wait_for_port(port, process, f"replica {index}", directory)
            ports.append(port)
        yield ports
    finally:
        for process in started:
            setup.processes.stop(process)


@contextmanager
def haproxy(setup: Setup, ports: list[int]) -> Iterator[int]:
    directory = Path(tempfile.mkdtemp(prefix="haproxy-", dir=setup.workdir))
    port = free_port()
    servers = "\n".join(f"    server r{n} 127.0.0.1:{p}" for n, p in enumerate(ports))
    values = {"listen": f"127.0.0.1:{port}", "servers": servers}
    config = render("haproxy.cfg", directory / "haproxy.cfg", values)
    process = setup.processes.start("haproxy", [tool("haproxy"), "-db", "-f", str(config)],
                                    directory)  # fmt: skip
    try:
        wait_for_port(port, process, "haproxy", directory)
        yield int(port)
    finally:
        setup.processes.stop(process)


# --- rates -----------------------------------------------------------------------------------


def rates(setup: Setup, port: int, seconds: int, rounds: int) -> dict[str, dict[str, float]]:
    """GET /v2/ (wrk) and blob HEADs (ab) at `port`: req/s over the runs, median p50/p99."""
    url = f"https://127.0.0.1:{port}"
    auth = setup.authorization(PULLER)
    runs: dict[str, list[Load]] = {"GET /v2/": [], "HEAD blob": []}
    for _ in range(rounds):
        runs["GET /v2/"].append(wrk(url + "/v2/", "GET", auth, CONNECTIONS, seconds))
        runs["HEAD blob"].append(ab(url + setup.blob_path, auth, CONNECTIONS, seconds))
    out = {}
    for case, loads in runs.items():
        requests = sum(load.requests for load in loads)
        out[case] = {
            "rps": requests / sum(load.seconds for load in loads),
            "p50_ms": sorted(load.p50_ms for load in loads)[len(loads) // 2],
            "p99_ms": sorted(load.p99_ms for load in loads)[len(loads) // 2],
            "errors": sum(load.non_2xx + load.failed for load in loads),
        }
    return out


# --- Redis commands per request kind ---------------------------------------------------------


@dataclass
class Client:
    """Requests to one replica on one keep-alive connection, as any client address."""

    setup: Setup
    port: int

    def __post_init__(self) -> None:
        context = ssl.create_default_context(cafile=str(self.setup.fixtures.cert))
        self.connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context)

    def send(self, method: str, path: str, authorization: str, address: str) -> int:
        headers = {"Authorization": authorization, "X-Forwarded-For": address}
        self.connection.request(method, path, headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status


@dataclass(frozen=True)
class Kind:
    """One kind of request: how to send the n-th, the answer it should get, how many (None:
    the run's count), and what to send before counting starts."""

    name: str
    send: Callable[[Client, int], int]
    expected: int
    count: int | None = None
    before: Callable[[Client], None] = lambda _: None


def kinds(setup: Setup) -> list[Kind]:
    puller, pusher = setup.authorization(PULLER), setup.authorization(PUSHER)
    wrong = setup.authorization(PULLER, "wrong")
    blob = setup.blob_path

    def address(block: int, n: int) -> str:
        return f"10.{block}.{n // 250}.{n % 250}"

    def lock(client: Client) -> None:  # throttle.attempts (5) failures: locked for a second
        for _ in range(5):
            client.send("GET", "/v2/", wrong, "10.3.0.1")

    return [
        Kind("GET /v2/, credential verified, address known (the hot path)",
             lambda c, n: c.send("GET", "/v2/", puller, "10.0.0.1"), 200),
        Kind("HEAD blob, credential verified (answered from the cache)",
             lambda c, n: c.send("HEAD", blob, puller, "10.0.0.1"), 200),
        Kind("first login of a user from an address",
             lambda c, n: c.send("GET", "/v2/", puller, address(1, n)), 200),
        # Fewer than the 4 x attempts failures that lock a user across addresses.
        Kind("wrong password (401)",
             lambda c, n: c.send("GET", "/v2/", wrong, address(2, n)), 401, count=15),
        Kind("throttled (429)", lambda c, n: c.send("GET", "/v2/", wrong, "10.3.0.1"), 429,
             count=15, before=lock),
        Kind("blob DELETE (forwarded; this registry refuses it)",
             lambda c, n: c.send("DELETE", f"/v2/bench/x/blobs/sha256:{n:064x}", pusher,
                                 "10.0.0.1"), 405),
        Kind("Redis user, first request (record not cached, new address)",
             lambda c, n: c.send("GET", "/v2/", redis_user(setup, n), "10.0.0.1"), 200),
        Kind("Redis user, verified (the hot path)",
             lambda c, n: c.send("GET", "/v2/", redis_user(setup, n), "10.0.0.1"), 200),
    ]  # fmt: skip


def redis_user(setup: Setup, n: int) -> str:
    return setup.authorization(f"redis-user-{n}", f"redis-pw-{n}")


def add_redis_users(client: redis.Redis, count: int) -> None:
    with client.pipeline() as pipe:
        for n in range(count):
            pipe.hset(f"{PREFIX}user:redis-user-{n}", "password", hash_password(f"redis-pw-{n}", 4))
        pipe.incr(f"{PREFIX}users:version")
        pipe.execute()


def parse_monitor(text: str) -> dict[str, Counter[str]]:
    """`redis-cli monitor` output -> {marker: commands seen after it}; background dropped."""
    sections: dict[str, Counter[str]] = {}
    current: Counter[str] | None = None
    for line in text.splitlines():
        quoted = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
        if not quoted:
            continue
        command = quoted[0].upper()
        if command == "ECHO" and len(quoted) > 1 and quoted[1].startswith("bench-marker:"):
            current = sections.setdefault(quoted[1].removeprefix("bench-marker:"), Counter())
            continue
        named = " ".join([command, *quoted[1:2]])
        if current is not None and not named.startswith(BACKGROUND):
            current[command] += 1
        if current is not None and named.startswith(BACKGROUND):
            current["(background) " + command] += 1
    return sections


def commands_per_kind(setup: Setup, redis_port: int, count: int) -> dict[str, Any]:
    client = redis.Redis(port=redis_port)
    add_redis_users(client, count)
    log_path = setup.workdir / "monitor.log"
    with replicas(setup, 1, redis_port) as (port,), log_path.open("wb") as out:
        argv = [tool("redis-cli"), "-p", str(redis_port), "monitor"]
        monitor = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # monitor attached
            replica = Client(setup, port)  # first logins, the blob's answer cached
            for user in (PULLER, PUSHER):
                replica.send("GET", "/v2/", setup.authorization(user), "10.0.0.1")
            replica.send("HEAD", setup.blob_path, setup.authorization(PULLER),
                         "10.0.0.1")  # fmt: skip
            statuses: dict[str, Counter[int]] = {}
            for kind in kinds(setup):
                client.echo("bench-marker:(between kinds)")
                kind.before(replica)
                client.echo(f"bench-marker:{kind.name}")
                statuses[kind.name] = Counter(
                    kind.send(replica, n) for n in range(kind.count or count)
                )
                time.sleep(0.3)  # what the writer sends after the answers
            client.echo("bench-marker:idle")
            time.sleep(IDLE_SECONDS)
            client.echo("bench-marker:end")
            time.sleep(0.3)
        finally:
            monitor.terminate()
            monitor.wait()
    sections = parse_monitor(log_path.read_text(errors="replace"))
    result: dict[str, Any] = {}
    for kind in kinds(setup):
        seen = sections.get(kind.name, Counter())
        sent = kind.count or count
        per_request = {c: n / sent for c, n in seen.items() if not c.startswith("(background)")}
        result[kind.name] = {
            "commands_per_request": sum(per_request.values()),
            "by_command": per_request,
            "statuses": dict(statuses[kind.name]),
            "expected_status": kind.expected,
            "requests": sent,
        }
    idle = sections.get("idle", Counter())
    result["idle, per second (one worker)"] = {
        "commands_per_request": sum(idle.values()) / IDLE_SECONDS,
        "by_command": {c: n / IDLE_SECONDS for c, n in idle.items()},
    }
    return result


# --- the case --------------------------------------------------------------------------------


def run_case(
    workdir: Path, fixtures: Fixtures, registry: str, processes: Processes, quick: bool
) -> str:
    """Everything above; the markdown report (also written under bench/results/)."""
    setup = Setup(workdir, fixtures, registry, processes)
    seconds, rounds, count = (1, 1, 20) if quick else (3, 2, 100)
    redis_port = start_redis(setup)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, count_of_replicas, balanced in CONFIGS:
        log(f"replicas: {name}, {rounds} x {seconds}s per case")
        with replicas(setup, count_of_replicas, redis_port) as ports:
            if balanced:
                with haproxy(setup, ports) as port:
                    table[name] = rates(setup, port, seconds, rounds)
            else:
                table[name] = rates(setup, ports[0], seconds, rounds)
    log(f"replicas: Redis commands per request, {count} requests of each kind")
    commands = commands_per_kind(setup, redis_port, count)
    return report(table, commands, seconds, rounds, count)


def report(
    table: dict[str, dict[str, dict[str, float]]],
    commands: dict[str, Any],
    seconds: int,
    rounds: int,
    count: int,
) -> str:
    lines = [
        "## Replicas behind HAProxy, sharing Redis",
        "",
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; one worker "
        f"per replica; {CONNECTIONS} connections, {rounds} x {seconds}s per case; wrk and ab, "
        "HAProxy, redis-server and the registry on the same CPUs.",
        "",
        "| setup | GET /v2/ (cost 5) req/s | p50 / p99 ms | HEAD blob req/s | p50 / p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, cases in table.items():
        get, head = cases["GET /v2/"], cases["HEAD blob"]
        flag = " !" if get["errors"] or head["errors"] else ""
        lines.append(
            f"| {name}{flag} | {get['rps']:,.0f} | {get['p50_ms']:.3g} / {get['p99_ms']:.3g} | "
            f"{head['rps']:,.0f} | {head['p50_ms']:.3g} / {head['p99_ms']:.3g} |"
        )
    lines += [
        "",
        f"Redis commands per request ({count} of each kind to one replica, counted with MONITOR):",
        "",
        "| request | commands | which | answers |",
        "|---|---:|---|---|",
    ]
    for kind, seen in commands.items():
        which = ", ".join(f"{c} {n:g}" for c, n in sorted(seen["by_command"].items())) or "-"
        answers = ", ".join(f"{s}: {n}" for s, n in sorted(seen.get("statuses", {}).items()))
        lines.append(f"| {kind} | {seen['commands_per_request']:g} | {which} | {answers} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas.md").write_text(text)
    data = {"rates": table, "commands": commands, "seconds": seconds, "rounds": rounds}
    (RESULTS / "replicas.json").write_text(json.dumps(data, indent=2) + "\n")
    return text


Case = Callable[[Path, Fixtures, str, Processes], str]  # (workdir, files, registry, ...) -> report


def run_alone(name: str, case: Case) -> int:
    """A case on its own: a registry of its own seeded with the quick plan's image (a 16 MiB
    layer is plenty for HEADs), the case's report printed, everything stopped after."""
    # SIGTERM unwinds like Ctrl-C does, through the `finally` that stops what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix=f"regproxy-{name}-"))
    processes = Processes()
    try:
        fixtures = make_fixtures(workdir, PLANS["quick"])
        direct = start_registry(workdir / "registry", processes)
        push(direct, fixtures, "bench/seed", workdir)
        text = case(workdir, fixtures, f"127.0.0.1:{direct.port}", processes)
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(text, end="")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs, 20 requests per kind")
    args = parser.parse_args()
    return run_alone("replicas", functools.partial(run_case, quick=args.quick))


if __name__ == "__main__":
    sys.exit(main())
