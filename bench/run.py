#!/usr/bin/env python3
"""`make bench`: regproxy side by side with the direct registry, nginx and Apache, in one run.

Starts on free loopback ports, all in one temp dir: a docker-registry, regproxy, nginx as in the
Docker docs' recipe ("nginx"), nginx as an expert would tune it ("nginx-tuned"), Apache httpd as
in the recipe ("apache"), and nginx with TLS and proxying but no authentication ("limit"), all
with the same certificate and users. Every case runs against every target, interleaved (targets
in a rotating order within each case, repeated runs round-robin), while each target's whole
process tree is sampled for peak RSS and CPU time. Prints one markdown table with ratios against
the direct registry and the limit, and writes JSON, a PNG chart and the table under
bench/results/. Everything started is stopped by PID at the end, and the temp dir removed.

    .venv/bin/python bench/run.py [--quick] [--workers N] [--cache-ttl SECONDS]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import storm as storm_module  # bench/storm.py: this directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "bench" / "templates"
RESULTS = ROOT / "bench" / "results"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
MIB = 1 << 20
MB = 1_000_000
SAMPLE_INTERVAL = 0.05  # seconds between RSS samples of a target's process tree
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 30.0
SETTLE_WINDOW, SETTLE_TIMEOUT = 0.1, 15.0  # seconds: idle check after each rate run

# Users, as the recipe has them: any valid user pulls, group "pusher" also pushes.
PULLER, PULLER_10, PUSHER = "reader", "reader10", "writer"
USER_COST = {PULLER: 5, PUSHER: 5, PULLER_10: 10}
PUSH_GROUP = "pusher"
STORM_COST = 10  # bcrypt cost of every storm user
STORM_REPO = "storm/pull"  # the image every pull storm pulls, seeded once (direct)

DIRECT, LIMIT = "direct", "limit"
TARGETS = {
    DIRECT: "docker-registry itself, plain HTTP, no front end",
    LIMIT: "nginx, TLS and streaming proxy with keep-alive, no authentication",
    "regproxy": "regproxy serve, --workers N",
    "nginx-tuned": "nginx with auth_basic, no buffering, keep-alive to the registry",
    "nginx": "nginx as in the Docker docs' recipe (auth_basic, buffering)",
    "apache": "Apache httpd as in the Docker docs' recipe (mod_proxy, AuthGroupFile)",
}
TARGET_ORDER = tuple(TARGETS)


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How long and how big. The default fits in 5 minutes, --quick in 1."""

    name: str
    rate_rounds: int  # runs per (rate case, target), round-robin over the targets
    rate_seconds: int  # length of each run (wrk counts whole seconds)
    blob_mib: int  # size of the layer that is pulled and pushed
    get_runs: int  # single-download runs per target (the median is reported)
    push_runs: int  # skopeo pushes per target (the median is reported)
    sweep: tuple[int, ...]  # connections of the growth sweep, besides main_concurrency
    parallel_downloads: tuple[int, ...]  # concurrent GETs of the blob (1 is the GET case)
    note: str  # what this plan leaves out, said in the report
    storm: StormPlan
    main_concurrency: int = 64


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
        name="full", rate_rounds=2, rate_seconds=1, blob_mib=256, get_runs=3, push_runs=2,
        sweep=(1, 8, 256),
        parallel_downloads=(4, 16), note="", storm=FULL_STORM,
    ),
    # wrk runs whole seconds, so a minute leaves no room for the sweep's 18 extra runs; fewer
    # connections leave less bcrypt behind to wait for after each cost-10 run. A storm costs
    # nginx and Apache a cost-10 bcrypt per request: the quick storms are small.
    "quick": Plan(
        name="quick", rate_rounds=1, rate_seconds=1, blob_mib=16, get_runs=2, push_runs=1,
        sweep=(),
        parallel_downloads=(4, 16), main_concurrency=16,
        storm=replace(FULL_STORM, pull_clients=(8,), push_clients=4, timeout=120,
                      pull_layers_mb=tuple(mb / 8 for mb in FULL_STORM.pull_layers_mb)),
        note="Quick run: 16 connections instead of 64, a 16 MiB blob instead of 256 MiB, "
        "1 push per target, no sweep over connections; storms of 8 pulls of an 8 MB image "
        "and 4 pushes.",
    ),
}  # fmt: skip
SECTIONS = ("rate", "get", "push", "storm", "replicas")  # --only picks some


# --- processes -------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A command's path; Debian puts nginx and apache2 in /usr/sbin, not always on PATH, and
    py-spy is in the virtualenv beside this Python."""
    path = shutil.which(name) or shutil.which(
        name, path=f"/usr/sbin:/sbin:{Path(sys.executable).parent}"
    )
    if path is None:
        raise SystemExit(f"{name} not found: run `make bench`, which installs it")
    return path


def process_tree(root: int) -> dict[int, list[bytes]]:
    """`root` and every process below it, each with its /proc stat fields from field 3 on."""
    stats: dict[int, list[bytes]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: fields follow the last ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(fields: list[bytes]) -> float:
    """utime + stime of the process and of its children that it has waited for."""
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def tree_cpu_seconds(*roots: int) -> float:
    return sum(cpu_seconds(fields) for root in roots for fields in process_tree(root).values())


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0  # gone, or a kernel thread


@dataclass
class Usage:
    """A process tree during a case: peak VmRSS summed over the tree, peak VmRSS of its
    largest worker (a process below the root; the root itself when it has none), and the CPU
    seconds the tree used."""

    tree_kib: int = 0
    worker_kib: int = 0
    cpu_seconds: float = 0.0

    def include(self, other: Usage) -> None:
        self.tree_kib = max(self.tree_kib, other.tree_kib)
        self.worker_kib = max(self.worker_kib, other.worker_kib)
        self.cpu_seconds += other.cpu_seconds


class UsageSampler:
    """Samples one process tree every SAMPLE_INTERVAL seconds in a background thread."""

    def __init__(self, root: int) -> None:
        self.usage = Usage()
        self._root = root
        self._cpu_at_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        """Update the peaks; the tree's CPU seconds so far."""
        tree = process_tree(self._root)
        sizes = {pid: rss_kib(pid) for pid in tree}
        workers = [size for pid, size in sizes.items() if pid != self._root] or [*sizes.values()]
        self.usage.tree_kib = max(self.usage.tree_kib, sum(sizes.values()))
        self.usage.worker_kib = max(self.usage.worker_kib, *workers, 0)
        return sum(cpu_seconds(fields) for fields in tree.values())

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def __enter__(self) -> Usage:
        self._cpu_at_start = self._sample()
        self._thread.start()
        return self.usage

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.usage.cpu_seconds = self._sample() - self._cpu_at_start


class Processes:
    """What this run started, stopped by PID (never by name) in reverse order."""

    def __init__(self) -> None:
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], workdir: Path) -> subprocess.Popen[bytes]:
        log(f"starting {name}: {' '.join(argv)}")
        with open(workdir / "stdout.log", "ab") as out, open(workdir / "stderr.log", "ab") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        self._started.append((name, process))
        return process

    def stop_all(self) -> None:
        while self._started:
            self.stop(self._started[-1][1])

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM (each server stops its own workers); SIGKILL to its tree after 15 s."""
        name = next(n for n, p in self._started if p is process)
        self._started.remove((name, process))
        if process.poll() is not None:
            return
        tree = list(process_tree(process.pid))
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {process.pid}) ignored SIGTERM: killing pids {tree}")
            for pid in tree:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()


def machine(load_before: float) -> dict[str, object]:
    """What a result was measured on, for the JSON beside each report."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def last_lines(directory: Path, count: int = 10) -> str:
    """The end of a server's own logs (stderr, error log), for an error message."""
    lines = []
    for path in sorted(directory.glob("*.log")):
        if path.name != "access.log":
            lines += [f"{path.name}: {line}" for line in path.read_text().splitlines()[-count:]]
    return "\n".join(lines)


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, logs: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{last_lines(logs)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT}s")


def render(template: str, destination: Path, values: dict[str, object]) -> Path:
    """Fill `{{name}}` placeholders; a placeholder without a value is an error."""
    text = (TEMPLATES / template).read_text()

    def value(match: re.Match[str]) -> str:
        return str(values[match.group(1)])

    destination.write_text(re.sub(r"\{\{(\w+)\}\}", value, text))
    return destination


# --- fixtures: certificate, users, image -----------------------------------------------------


@dataclass(frozen=True)
class Fixtures:
    cert: Path
    key: Path
    cert_dir: Path  # holds only ca.crt, for skopeo --dest-cert-dir
    htpasswd: Path
    pushers_htpasswd: Path  # the pushers' lines only, for nginx's limit_except
    groups: Path
    passwords: dict[str, str]
    storm_users: dict[str, list[str]]  # storm case -> its users, one per client
    layout: Path  # OCI layout with one single-layer image, tag "bench"
    layer_digest: str
    layer_size: int


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    cert_dir = directory / "ca"
    cert_dir.mkdir()
    shutil.copy(cert, cert_dir / "ca.crt")
    return cert, key, cert_dir


def storm_users(storm: StormPlan) -> dict[str, list[str]]:
    """The users of each storm case: a fresh set per case, so every storm starts with cold
    credential caches (each target is a separate process with its own)."""
    cases = {f"pull-{n}": n for n in storm.pull_clients} | {f"push-{storm.push_clients}":
                                                           storm.push_clients}  # fmt: skip
    return {case: [f"{case}-{i:02d}" for i in range(n)] for case, n in cases.items()}


def make_users(
    directory: Path, storm: StormPlan
) -> tuple[Path, Path, Path, dict[str, str], dict[str, list[str]]]:
    """htpasswd -B with the recipe's split: pullers, and pushers in group "pusher"; then the
    storms' users, every one at bcrypt cost 10, the push storm's in group "pusher" too."""
    htpasswd, pushers, groups = (directory / n for n in ("htpasswd", "pushers.htpasswd", "groups"))
    passwords = {user: secrets.token_urlsafe(12) for user in USER_COST}
    for user, cost in USER_COST.items():
        create = [] if htpasswd.exists() else ["-c"]
        subprocess.run(
            [tool("htpasswd"), *create, "-i", "-B", "-C", str(cost), str(htpasswd), user],
            input=passwords[user].encode(), check=True, capture_output=True,
        )  # fmt: skip
    by_case = storm_users(storm)
    crowd = {user: secrets.token_urlsafe(12) for users in by_case.values() for user in users}
    passwords |= crowd
    with open(htpasswd, "a") as out:
        out.writelines(storm_module.htpasswd_lines(crowd, STORM_COST))
    pushing = [PUSHER] + [u for case, users in by_case.items() if case.startswith("push")
                          for u in users]  # fmt: skip
    lines = htpasswd.read_text().splitlines(keepends=True)
    pushers.write_text("".join(line for line in lines if line.split(":")[0] in pushing))
    groups.write_text(f"{PUSH_GROUP}: {' '.join(pushing)}\n")
    for path in (htpasswd, pushers, groups):
        path.chmod(0o644)  # nginx and Apache workers run as nobody/daemon when we are root
    return htpasswd, pushers, groups, passwords, by_case


def write_blob(blobs: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest


def make_image(layout: Path, size: int) -> tuple[str, int]:
    """An OCI layout with one image whose single layer is a gzip'd tar of `size` random bytes.

    gzip level 0 (stored): the layer is already compressed as far as skopeo can tell, so a push
    sends it as it is instead of spending the time in gzip.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    member = tarfile.TarInfo("random.bin")
    member.size, member.mode, member.mtime = size, 0o644, 0
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    diff_id, digest, tmp = hashlib.sha256(), hashlib.sha256(), blobs / "layer.tmp"
    with open(tmp, "wb") as out:

        def put(raw: bytes) -> None:
            diff_id.update(raw)
            packed = compressor.compress(raw)
            digest.update(packed)
            out.write(packed)

        put(member.tobuf(tarfile.USTAR_FORMAT))
        for offset in range(0, size, MIB):
            put(os.urandom(min(MIB, size - offset)))
        put(b"\0" * (-size % 512 + 1024))  # pad the member, then the two end-of-archive blocks
        tail = compressor.flush()
        digest.update(tail)
        out.write(tail)
    layer_digest = "sha256:" + digest.hexdigest()
    layer_size = tmp.stat().st_size
    tmp.rename(blobs / digest.hexdigest())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id.hexdigest()]},
        }
    ).encode()
    config_digest = write_blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
    ).encode()
    manifest_digest = write_blob(blobs, manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return layer_digest, layer_size


def make_fixtures(directory: Path, plan: Plan) -> Fixtures:
    log(f"making the certificate, users (bcrypt cost 5 and 10; the storms' at cost 10) "
        f"and a {plan.blob_mib} MiB image")  # fmt: skip
    cert, key, cert_dir = make_certificate(directory)
    htpasswd, pushers, groups, passwords, by_case = make_users(directory, plan.storm)
    layout = directory / "image"
    layer_digest, layer_size = make_image(layout, plan.blob_mib * MIB)
    return Fixtures(
        cert, key, cert_dir, htpasswd, pushers, groups, passwords, by_case, layout, layer_digest,
        layer_size,
    )  # fmt: skip


# --- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    tls: bool
    authenticates: bool
    process: subprocess.Popen[bytes]  # sampled for RSS and CPU: the registry for direct

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def start_targets(
    workdir: Path, fixtures: Fixtures, workers: int, cache_ttl: float, processes: Processes
) -> dict[str, Target]:
    registry_port = free_port()
    registry_dir = workdir / "registry"
    registry_dir.mkdir()
    config = render(
        "registry.yml",
        registry_dir / "registry.yml",
        {
            "dir": registry_dir,
            "listen": f"127.0.0.1:{registry_port}",
            "secret": secrets.token_hex(16),
        },
    )
    registry = processes.start(
        "docker-registry", [tool("docker-registry"), "serve", str(config)], registry_dir
    )
    wait_for_port(registry_port, registry, "docker-registry", registry_dir)
    targets = {DIRECT: Target(DIRECT, registry_port, False, False, registry)}
    common = {
        "registry": f"127.0.0.1:{registry_port}",
        "cert": fixtures.cert,
        "key": fixtures.key,
        "htpasswd": fixtures.htpasswd,
        "pushers_htpasswd": fixtures.pushers_htpasswd,
        "groups": fixtures.groups,
    }
    fronts: list[tuple[str, str, bool, Callable[[Path, dict[str, object]], list[str]]]] = [
        (LIMIT, "nginx-limit.conf", False, nginx_argv),
        ("regproxy", "regproxy.yaml", True, regproxy_argv(workers)),
        ("nginx-tuned", "nginx-tuned.conf", True, nginx_argv),
        ("nginx", "nginx-classic.conf", True, nginx_argv),
        ("apache", "apache.conf", True, apache_argv),
    ]
    for name, template, authenticates, argv in fronts:
        directory = workdir / name
        directory.mkdir()
        port = free_port()
        values: dict[str, object] = {
            **common,
            "dir": directory,
            "listen": f"127.0.0.1:{port}",
            "workers": workers,
            "cache_ttl": cache_ttl,
            "modules": APACHE_MODULES,
        }
        config = render(template, directory / template, values)
        process = processes.start(name, argv(config, values), directory)
        wait_for_port(port, process, name, directory)
        targets[name] = Target(name, port, True, authenticates, process)
    return {name: targets[name] for name in TARGET_ORDER}


def nginx_argv(config: Path, values: dict[str, object]) -> list[str]:
    return [tool("nginx"), "-p", f"{values['dir']}/", "-e", f"{values['dir']}/error.log",
            "-c", str(config)]  # fmt: skip


def apache_argv(config: Path, values: dict[str, object]) -> list[str]:
    return [tool("apache2"), "-d", str(values["dir"]), "-f", str(config), "-DFOREGROUND"]


def regproxy_argv(workers: int) -> Callable[[Path, dict[str, object]], list[str]]:
    def argv(config: Path, _values: dict[str, object]) -> list[str]:
        return [sys.executable, "-m", "proxy", "serve", "-c", str(config),
                "--workers", str(workers)]  # fmt: skip

    return argv


# --- clients ---------------------------------------------------------------------------------


class Client:
    """Plain http.client requests to one target, with the bench's CA and users."""

    def __init__(self, target: Target, fixtures: Fixtures) -> None:
        self.target = target
        self._fixtures = fixtures
        self.context = ssl.create_default_context(cafile=str(fixtures.cert))

    def authorization(self, user: str | None) -> str | None:
        if user is None:
            return None
        token = f"{user}:{self._fixtures.passwords[user]}".encode()
        return "Basic " + base64.b64encode(token).decode()

    def connect(self) -> http.client.HTTPConnection:
        if self.target.tls:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.target.port, context=self.context, timeout=60
            )
        return http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=60)

    def request(self, method: str, path: str, user: str | None) -> http.client.HTTPResponse:
        """One request on a new connection; the caller reads (or not) and closes."""
        connection = self.connect()
        auth = self.authorization(user)
        connection.request(method, path, headers={"Authorization": auth} if auth else {})
        return connection.getresponse()

    def verify_blob(self, path: str, user: str, size: int, digest: str) -> None:
        """GET a blob and check its length and sha256 (untimed: the timed GETs use curl)."""
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        sha = hashlib.sha256()
        received = 0
        response = self.request("GET", path, user)
        if response.status != 200:
            raise RuntimeError(f"{self.target.name}: GET {path} answered {response.status}")
        while count := response.readinto(buffer):
            sha.update(view[:count])
            received += count
        response.close()
        if received != size or "sha256:" + sha.hexdigest() != digest:
            raise RuntimeError(f"{self.target.name}: GET {path}: wrong bytes ({received})")


# --- load generators -------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What a load generator saw in `seconds`: answers, latency percentiles, failures."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # answers other than 2xx/3xx
    failed: int  # requests without an answer: connect, read or write errors, timeouts


def wrk(
    url: str, method: str, authorization: str | None, connections: int, seconds: int,
    accept: str | None = None,
) -> Load:  # fmt: skip
    argv = [tool("wrk"), "-t", "1", "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "30s", "-s", str(TEMPLATES / "wrk-report.lua"), url,
            "--", method, authorization or "-", *([accept] if accept else [])]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return Load(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        non_2xx=report["status_errors"],
        failed=report["failed"],
    )


def ab(url: str, authorization: str | None, connections: int, seconds: int) -> Load:
    """ApacheBench, for HEAD: wrk waits for the body a HEAD answer announces (wg/wrk#198)."""
    headers = ["-H", f"Authorization: {authorization}"] if authorization else []
    argv = [tool("ab"), "-q", "-i", "-k", "-r", "-c", str(connections), "-t", str(seconds),
            "-n", "100000000", "-s", "30", *headers, url]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    def figure(pattern: str) -> float:
        """A figure of the report; percentiles are missing when (almost) nothing answered."""
        match = re.search(pattern, out, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return Load(
        requests=int(figure(r"^Complete requests:\s+(\d+)")),
        seconds=figure(r"^Time taken for tests:\s+([\d.]+)") or seconds,
        p50_ms=figure(r"^\s+50%\s+(\d+)"),  # ab's percentiles are whole milliseconds
        p99_ms=figure(r"^\s+99%\s+(\d+)"),
        non_2xx=int(figure(r"^Non-2xx responses:\s+(\d+)")),
        failed=int(figure(r"^Failed requests:\s+(\d+)")),
    )


# --- cases -----------------------------------------------------------------------------------


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


@dataclass
class Result:
    case: str
    target: str
    metrics: dict[str, float]
    usage: Usage
    note: str = ""
    errors: dict[str, int] = field(default_factory=dict)  # storms: what stopped clients
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
        connections = self.plan.main_concurrency
        return [
            *(RateCase(*case, connections) for case in MAIN_RATE_CASES),
            *(RateCase(f"sweep-c{n}", "GET /v2/, cost 5", "GET", PULLER, False, n)
              for n in self.plan.sweep),
        ]  # fmt: skip

    def push(self, target: Target, repository: str) -> float:
        """Seconds for skopeo to push the image, with a blob-info cache of its own."""
        home = Path(tempfile.mkdtemp(prefix="skopeo-home-", dir=self.workdir))
        env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home),
               "_CONTAINERS_ROOTLESS_UID": "4242"}  # fmt: skip
        tls = (["--dest-cert-dir", str(self.fixtures.cert_dir)] if target.tls
               else ["--dest-tls-verify=false"])  # fmt: skip
        argv = [tool("skopeo"), "--insecure-policy", "copy", "--quiet", *tls,
                "--dest-creds", f"{PUSHER}:{self.fixtures.passwords[PUSHER]}",
                f"oci:{self.fixtures.layout}:bench",
                f"docker://127.0.0.1:{target.port}/{repository}:latest"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        shutil.rmtree(home)
        if done.returncode != 0:
            raise RuntimeError(f"{target.name}: skopeo push failed: {done.stderr.strip()}")
        return elapsed

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
        rounds, seconds = self.plan.rate_rounds, self.plan.rate_seconds
        log(f"{case.title}, {case.concurrency} connections: {rounds} x {seconds}s per target")
        loads: dict[str, list[Load]] = {name: [] for name in self.targets}
        usages = {name: Usage() for name in self.targets}
        for _ in range(rounds):
            for name in self.rotated(list(self.targets)):
                client = self.clients[name]
                url = client.target.url + (self.blob_path if case.blob else "/v2/")
                auth = client.authorization(case.user)
                with self.measured(name, case.key) as usage:
                    if case.method == "HEAD":
                        load = ab(url, auth, case.concurrency, seconds)
                    else:
                        load = wrk(url, case.method, auth, case.concurrency, seconds)
                self.settle(client.target)
                loads[name].append(load)
                usages[name].include(usage)
        for name, runs in loads.items():
            self.results.append(self.rate_result(case, name, runs, usages[name]))

    def rate_result(self, case: RateCase, name: str, runs: list[Load], usage: Usage) -> Result:
        """Counts added up over the runs; latency percentiles are the runs' median."""
        requests, seconds = sum(r.requests for r in runs), sum(r.seconds for r in runs)
        non_2xx, failed = sum(r.non_2xx for r in runs), sum(r.failed for r in runs)
        metrics = {
            "rps": requests / seconds,
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
        result = Result(case.key, name, metrics, usage)
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
                with sampled(self.targets[name]) as usage:
                    seconds[name] += self.downloads(name, 1)
                usages[name].include(usage)
        for name, runs in seconds.items():
            rates = [size / s / MB for s in runs]
            gigabytes = len(runs) * size / 1e9
            metrics = {"mbps": statistics.median(rates), "mbps_min": min(rates),
                       "mbps_max": max(rates), "runs": len(runs),
                       "cpu_s_per_gb": usages[name].cpu_seconds / gigabytes}  # fmt: skip
            self.results.append(Result("get-blob", name, metrics, usages[name]))

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
                    seconds[name].append(self.push(self.targets[name], f"bench/{name}-{run}"))
                usages[name].include(usage)
        for name, runs in seconds.items():
            metrics = {"seconds": statistics.median(runs), "seconds_min": min(runs),
                       "seconds_max": max(runs), "runs": len(runs),
                       "cpu_s_per_push": usages[name].cpu_seconds / len(runs)}  # fmt: skip
            self.results.append(Result("push", name, metrics, usages[name]))

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
            with self.measured(name, case) as usage:
                outcome = self.storm(name, users, work)
            self.settle(self.targets[name])
            result = storm_result(case, name, outcome, usage)
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
        self.push(self.targets[DIRECT], "bench/seed")
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


# --- report ----------------------------------------------------------------------------------


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


def comparable(result: Result | None) -> bool:
    """Measured, and with enough answers for its rate to mean something."""
    return result is not None and "rps_at_most" not in result.metrics


def times(value: float, base: float) -> float:
    return value / base if base else math.inf


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
    ratios = [
        f"{times(value, main_value(results[(row.case, base)])):.2f}x{base[0]}"
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


def save(name: str, text: str, data: dict[str, Any], chart_to: Callable[[Path], None]) -> None:
    """A report as `<name>-<stamp>` and `<name>latest` (.md, .json, .png) in bench/results;
    `name` is "" or a prefix ending in "-"."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"{name}{data['date']}"
    for base in (stamp, f"{name}latest"):
        (RESULTS / f"{base}.md").write_text(text)
        (RESULTS / f"{base}.json").write_text(json.dumps(data, indent=2) + "\n")
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
        ratio = times(main_value(ours), main_value(theirs))
        return Check(goal, f"{ratio:.2f}x", passes(ratio))

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
    if "get-blob" in measured:
        best = max(
            ("nginx", "nginx-tuned", "apache"), key=lambda t: main_value(by_key[("get-blob", t)])
        )
        out.append(compare(f"GET blob: ≥ 2x best of nginx/apache ({best})", "get-blob", best,
                           lambda r: r >= 2.0))  # fmt: skip
    if "push" in measured:
        out.append(compare("push: ≤ 1.1x direct time", "push", DIRECT, lambda r: r <= 1.1))
    if "anonymous" in measured:
        out.append(compare("anonymous 401: ≥ 1.5x apache req/s", "anonymous", "apache",
                           lambda r: r >= 1.5))  # fmt: skip
    largest = max(r.usage.worker_kib for r in results if r.target == "regproxy") / 1024
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
        ratios = {p: times(main_value(mine), main_value(by_key[(pull, p)])) for p in PEERS}
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
    if "anonymous" in ran:
        out.append(compare("anonymous 401: ≥ 1.0x apache req/s", "anonymous", "apache",
                           lambda r: r >= 1.0))  # fmt: skip
    tree = max(r.usage.tree_kib for r in results if r.target == "regproxy") / 1024
    out.append(Check(
        f"peak RSS of the whole tree ≤ 48 MiB per worker, parent included ({workers} workers: "
        f"{48 * workers} MiB), through the whole bench", f"{tree:.1f} MiB "
        f"({tree / workers:.1f} per worker)", tree <= 48 * workers,
    ))  # fmt: skip
    return out


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
    only = "" if set(sections) == set(SECTIONS) else f" Only {', '.join(sections)} (--only)."
    wall = time.monotonic() - started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        f"## regproxy bench ({plan.name}, {stamp})",
        "",
        f"{os.cpu_count()} CPUs ({platform.platform()}), load average {load_before:.1f} before "
        f"and {os.getloadavg()[0]:.1f} after: anything else running skews every number. "
        f"regproxy with {workers} workers, cache.ttl {cache_ttl:g}. Rate cases: "
        f"{plan.rate_rounds} x {plan.rate_seconds}s per target, round-robin, wrk (1 thread) "
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
    }
    save("", text, data, lambda path: chart(plan, results, path))
    return text


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
        help="py-spy flame graphs of regproxy in each rate and storm case (bench/results/)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})",
    )
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    if not sections or not set(sections) <= set(SECTIONS):
        parser.error(f"--only takes some of {','.join(SECTIONS)}")
    plan = PLANS["quick" if args.quick else "full"]
    started, load_before = time.monotonic(), os.getloadavg()[0]
    # SIGTERM unwinds like Ctrl-C does, through the `finally` that stops what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="regproxy-bench-"))
    workdir.chmod(0o755)  # nginx and Apache workers (nobody, daemon) read the user files
    processes = Processes()
    try:
        fixtures = make_fixtures(workdir, plan)
        targets = start_targets(workdir, fixtures, args.workers, args.cache_ttl, processes)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        profiles = RESULTS / f"profiles-{stamp}" if args.profile else None
        bench = Bench(plan, targets, fixtures, workdir, profiles)
        bench.run(sections)
        replica_text = ""
        if "replicas" in sections:  # bench/replicas.py (on sys.path): its own report
            import replicas

            registry = f"127.0.0.1:{targets[DIRECT].port}"
            replica_text = "\n" + replicas.run_case(
                sys.modules[__name__], workdir, fixtures, registry, processes, args.quick
            )
    finally:
        log("stopping what was started")
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(
        plan, args.workers, args.cache_ttl, targets, fixtures, bench.results, started, load_before,
        sections,
    )  # fmt: skip
    print(text + replica_text, end="")
    log(f"wrote {RESULTS}/latest.md, .json and .png in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
