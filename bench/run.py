#!/usr/bin/env python3
"""`make bench`: regproxy side by side with the direct registry, nginx and Apache, in one run.

Starts on free loopback ports, all in one temp dir: a docker-registry, regproxy, nginx as in the
Docker docs' recipe ("nginx"), nginx as an expert would tune it ("nginx-tuned"), Apache httpd as
in the recipe ("apache"), and nginx with TLS and proxying but no authentication ("limit"), all
with the same certificate and users. Every case runs against every target, interleaved (targets
in a rotating order within each case, repeated runs round-robin), while the front end's whole
process tree is sampled for peak RSS. Prints one markdown table with ratios against the direct
registry and the limit, and writes JSON, a PNG chart and the table under bench/results/.
Everything started is stopped by PID at the end, and the temp dir removed.

    .venv/bin/python bench/run.py [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "bench" / "templates"
RESULTS = ROOT / "bench" / "results"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
MIB = 1 << 20
MB = 1_000_000
RSS_INTERVAL = 0.05  # seconds between samples of a front end's process tree
STARTUP_TIMEOUT = 30.0

# Users, as the recipe has them: any valid user pulls, group "pusher" also pushes.
PULLER, PULLER_10, PUSHER = "reader", "reader10", "writer"
USER_COST = {PULLER: 5, PUSHER: 5, PULLER_10: 10}
PUSH_GROUP = "pusher"

DIRECT, LIMIT = "direct", "limit"
TARGET_ORDER = (DIRECT, LIMIT, "regproxy", "nginx-tuned", "nginx", "apache")


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How long and how big. The default fits in 5 minutes, --quick in 1."""

    name: str
    rate_seconds: int  # wrk duration per (case, target)
    blob_mib: int  # size of the layer that is pulled and pushed
    get_runs: int  # single-download runs per target (the median is reported)
    push_runs: int  # skopeo pushes per target (the median is reported)
    sweep: tuple[int, ...]  # concurrency levels of the growth sweep
    parallel_downloads: tuple[int, ...]  # concurrent downloads for the RSS growth case
    main_concurrency: int = 64


PLANS = {
    "full": Plan("full", 3, 256, 5, 3, (1, 8, 64, 256), (1, 4, 16)),
    "quick": Plan("quick", 1, 64, 2, 1, (1, 8, 64, 256), (1, 4, 16)),
}


# --- processes -------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A command's path; Debian puts nginx and apache2 in /usr/sbin, not always on PATH."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(f"{name} not found: run `make bench`, which installs it")
    return path


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: ppid follows the last ")".
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


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
class Rss:
    """Peak VmRSS of a process tree: the sum over the tree, and the largest single process."""

    tree_kib: int = 0
    process_kib: int = 0

    def include(self, other: Rss) -> None:
        self.tree_kib = max(self.tree_kib, other.tree_kib)
        self.process_kib = max(self.process_kib, other.process_kib)


class RssSampler:
    """Samples one process tree every RSS_INTERVAL seconds in a background thread."""

    def __init__(self, root: int) -> None:
        self.peak = Rss()
        self._root = root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        sizes = [rss_kib(pid) for pid in descendants(self._root)]
        self.peak.tree_kib = max(self.peak.tree_kib, sum(sizes))
        self.peak.process_kib = max(self.peak.process_kib, *sizes)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            self._sample()

    def __enter__(self) -> Rss:
        self._sample()
        self._thread.start()
        return self.peak

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


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
            name, process = self._started.pop()
            if process.poll() is not None:
                continue
            tree = descendants(process.pid)
            process.send_signal(signal.SIGTERM)  # each server stops its own workers
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {process.pid}) ignored SIGTERM: killing pids {tree}")
                for pid in tree:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait()


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


def make_users(directory: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """htpasswd -B with the recipe's split: pullers, and pushers in group "pusher"."""
    htpasswd, pushers, groups = (directory / n for n in ("htpasswd", "pushers.htpasswd", "groups"))
    passwords = {user: secrets.token_urlsafe(12) for user in USER_COST}
    for user, cost in USER_COST.items():
        create = [] if htpasswd.exists() else ["-c"]
        subprocess.run(
            [tool("htpasswd"), *create, "-i", "-B", "-C", str(cost), str(htpasswd), user],
            input=passwords[user].encode(), check=True, capture_output=True,
        )  # fmt: skip
    lines = htpasswd.read_text().splitlines(keepends=True)
    pushers.write_text("".join(line for line in lines if line.startswith(f"{PUSHER}:")))
    groups.write_text(f"{PUSH_GROUP}: {PUSHER}\n")
    for path in (htpasswd, pushers, groups):
        path.chmod(0o644)  # nginx and Apache workers run as nobody/daemon when we are root
    return htpasswd, pushers, groups, passwords


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
    log(f"making the certificate, users (bcrypt cost 5 and 10) and a {plan.blob_mib} MiB image")
    cert, key, cert_dir = make_certificate(directory)
    htpasswd, pushers, groups, passwords = make_users(directory)
    layout = directory / "image"
    layer_digest, layer_size = make_image(layout, plan.blob_mib * MIB)
    return Fixtures(
        cert, key, cert_dir, htpasswd, pushers, groups, passwords, layout, layer_digest, layer_size
    )


# --- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    what: str
    port: int
    tls: bool
    authenticates: bool
    process: subprocess.Popen[bytes] | None = None  # the front end; None for the registry

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def start_targets(
    workdir: Path, fixtures: Fixtures, workers: int, processes: Processes
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
    targets = {DIRECT: Target(DIRECT, "docker-registry, plain HTTP", registry_port, False, False)}
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
            "modules": APACHE_MODULES,
        }
        config = render(template, directory / template, values)
        process = processes.start(name, argv(config, values), directory)
        wait_for_port(port, process, name, directory)
        what = describe(template)
        targets[name] = Target(name, what, port, True, authenticates, process)
    return {name: targets[name] for name in TARGET_ORDER}


def describe(template: str) -> str:
    """The first comment line of a template says what the target is."""
    first = (TEMPLATES / template).read_text().splitlines()[0]
    return first.lstrip("#").strip()


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
        self._context = ssl.create_default_context(cafile=str(fixtures.cert))

    def authorization(self, user: str | None) -> str | None:
        if user is None:
            return None
        token = f"{user}:{self._fixtures.passwords[user]}".encode()
        return "Basic " + base64.b64encode(token).decode()

    def connect(self) -> http.client.HTTPConnection:
        if self.target.tls:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.target.port, context=self._context, timeout=60
            )
        return http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=60)

    def request(self, method: str, path: str, user: str | None) -> http.client.HTTPResponse:
        """One request on a new connection; the caller reads (or not) and closes."""
        connection = self.connect()
        auth = self.authorization(user)
        connection.request(method, path, headers={"Authorization": auth} if auth else {})
        return connection.getresponse()

    def download(self, path: str, user: str, size: int, digest: str) -> float:
        """GET a blob, checking its length and sha256; seconds from request to last byte."""
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        sha = hashlib.sha256()
        received = 0
        start = time.perf_counter()
        response = self.request("GET", path, user)
        if response.status != 200:
            raise RuntimeError(f"{self.target.name}: GET {path} answered {response.status}")
        while count := response.readinto(buffer):
            sha.update(view[:count])
            received += count
        elapsed = time.perf_counter() - start
        response.close()
        if received != size or "sha256:" + sha.hexdigest() != digest:
            raise RuntimeError(f"{self.target.name}: GET {path}: wrong bytes ({received})")
        return elapsed


# --- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateCase:
    key: str
    title: str
    method: str
    user: str | None  # None: no credentials
    concurrency: int
    blob: bool = False  # HEAD/GET the layer blob instead of /v2/


@dataclass
class Result:
    case: str
    target: str
    metrics: dict[str, float]
    rss: Rss | None  # None for the direct registry (no front end)
    note: str = ""


@contextmanager
def sampled(target: Target) -> Iterator[Rss | None]:
    """Peak RSS of the target's front end while the block runs."""
    if target.process is None:
        yield None
        return
    with RssSampler(target.process.pid) as peak:
        yield peak


class Bench:
    """Runs the cases, interleaved over the targets, and collects `Result`s."""

    def __init__(
        self, plan: Plan, targets: dict[str, Target], fixtures: Fixtures, workdir: Path
    ) -> None:
        self.plan = plan
        self.targets = targets
        self.fixtures = fixtures
        self.workdir = workdir
        self.clients = {name: Client(target, fixtures) for name, target in targets.items()}
        self.blob_path = f"/v2/bench/seed/blobs/{fixtures.layer_digest}"
        self.results: list[Result] = []
        self._rotation = 0

    def rotated(self, names: Sequence[str]) -> list[str]:
        """`names` in a different order on each call, so no target is always first or last."""
        self._rotation += 1
        shift = self._rotation % len(names)
        return [*names[shift:], *names[:shift]]

    def rate_cases(self) -> list[RateCase]:
        c = self.plan.main_concurrency
        cases = [
            RateCase("anonymous", "GET /v2/ without credentials (401)", "GET", None, c),
            RateCase("auth-cost5", "GET /v2/, bcrypt cost 5", "GET", PULLER, c),
            RateCase("auth-cost10", "GET /v2/, bcrypt cost 10", "GET", PULLER_10, c),
            RateCase("head-cost5", "HEAD blob, bcrypt cost 5", "HEAD", PULLER, c, blob=True),
            RateCase("head-cost10", "HEAD blob, bcrypt cost 10", "HEAD", PULLER_10, c, blob=True),
        ]
        cases += [
            RateCase(f"sweep-c{n}", f"GET /v2/, cost 5, {n} connections", "GET", PULLER, n)
            for n in self.plan.sweep
            if n != c  # the main cost-5 case is that point of the sweep
        ]
        return cases

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
        """Each target answers as configured before anything is timed."""
        for name, client in self.clients.items():
            anonymous = 401 if client.target.authenticates else 200
            checks = [("GET", "/v2/", None, anonymous), ("GET", "/v2/", PULLER, 200),
                      ("GET", "/v2/", PULLER_10, 200),
                      ("HEAD", self.blob_path, PULLER, 200)]  # fmt: skip
            for method, path, user, expected in checks:
                response = client.request(method, path, user)
                response.read()
                response.close()
                if response.status != expected:
                    raise RuntimeError(f"{name}: {method} {path} as {user} answered "
                                       f"{response.status}, expected {expected}")  # fmt: skip

    def run_rate(self, case: RateCase) -> None:
        log(f"{case.title}: {case.concurrency} connections, {self.plan.rate_seconds}s per target")
        for name in self.rotated(list(self.targets)):
            client = self.clients[name]
            path = self.blob_path if case.blob else "/v2/"
            argv = [tool("wrk"), "-t", "1", "-c", str(case.concurrency),
                    "-d", f"{self.plan.rate_seconds}s", "--timeout", "30s",
                    "-s", str(TEMPLATES / "wrk-report.lua"), client.target.url + path,
                    "--", case.method, client.authorization(case.user) or "-"]  # fmt: skip
            with sampled(client.target) as rss:
                out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            report = json.loads(out.strip().splitlines()[-1])
            metrics = {
                "rps": report["requests"] / (report["duration_us"] / 1e6),
                "p50_ms": report["p50_us"] / 1000,
                "p99_ms": report["p99_us"] / 1000,
                "requests": report["requests"],
                "status_errors": report["status_errors"],
                "socket_errors": report["socket_errors"],
            }
            result = Result(case.key, name, metrics, rss)
            refused = report["requests"] if case.user is None and client.target.authenticates else 0
            if report["status_errors"] != refused or report["socket_errors"]:
                result.note = (f"{report['status_errors']} non-2xx answers (expected {refused}), "
                               f"{report['socket_errors']} socket errors")  # fmt: skip
                log(f"  {name}: {result.note}")
            self.results.append(result)

    def run_get(self) -> None:
        size = self.fixtures.layer_size
        log(f"GET of the {size / MIB:.0f} MiB blob: {self.plan.get_runs} runs per target")
        seconds: dict[str, list[float]] = {name: [] for name in self.targets}
        peaks = {name: Rss() for name in self.targets}
        for _ in range(self.plan.get_runs):
            for name in self.rotated(list(self.targets)):
                with sampled(self.targets[name]) as rss:
                    seconds[name].append(self.download(name))
                if rss is not None:
                    peaks[name].include(rss)
        for name, runs in seconds.items():
            rates = [size / s / MB for s in runs]
            metrics = {"mbps": statistics.median(rates), "mbps_min": min(rates),
                       "mbps_max": max(rates), "runs": len(runs)}  # fmt: skip
            rss = peaks[name] if self.targets[name].process else None
            self.results.append(Result("get-blob", name, metrics, rss))

    def download(self, name: str) -> float:
        digest, size = self.fixtures.layer_digest, self.fixtures.layer_size
        return self.clients[name].download(self.blob_path, PULLER, size, digest)

    def run_parallel_gets(self) -> None:
        """Front ends only: how RSS grows with concurrent large downloads."""
        size = self.fixtures.layer_size
        fronts = [name for name, target in self.targets.items() if target.process is not None]
        for count in self.plan.parallel_downloads:
            log(f"{count} concurrent GETs of the {size / MIB:.0f} MiB blob per front end")
            for name in self.rotated(fronts):
                with sampled(self.targets[name]) as rss, ThreadPoolExecutor(count) as pool:
                    start = time.perf_counter()
                    list(pool.map(self.download, [name] * count))
                    elapsed = time.perf_counter() - start
                metrics = {"aggregate_mbps": count * size / elapsed / MB}
                self.results.append(Result(f"parallel-{count}", name, metrics, rss))

    def run_pushes(self) -> None:
        log(f"skopeo push of the image: {self.plan.push_runs} runs per target")
        seconds: dict[str, list[float]] = {name: [] for name in self.targets}
        peaks = {name: Rss() for name in self.targets}
        for run in range(self.plan.push_runs):
            for name in self.rotated(list(self.targets)):
                # A new repository each time: the registry has the blob, but not linked there,
                # so every push uploads all of it.
                with sampled(self.targets[name]) as rss:
                    seconds[name].append(self.push(self.targets[name], f"bench/{name}-{run}"))
                if rss is not None:
                    peaks[name].include(rss)
        for name, runs in seconds.items():
            metrics = {"seconds": statistics.median(runs), "seconds_min": min(runs),
                       "seconds_max": max(runs), "runs": len(runs)}  # fmt: skip
            rss = peaks[name] if self.targets[name].process else None
            self.results.append(Result("push", name, metrics, rss))

    def run(self) -> None:
        log("seeding the registry with the image (skopeo, direct)")
        self.push(self.targets[DIRECT], "bench/seed")
        self.check_answers()
        for case in self.rate_cases():
            self.run_rate(case)
        self.run_get()
        self.run_parallel_gets()
        self.run_pushes()


# --- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    case: str  # Result.case
    label: str
    metric: str
    kind: str  # "rate" (higher is better), "seconds" (lower is better), "latency", "rss"


def rows(plan: Plan, blob_mib: float) -> list[Row]:
    c = plan.main_concurrency
    out: list[Row] = []
    for key, title in (
        ("anonymous", "GET /v2/ without credentials (401)"),
        ("auth-cost5", "GET /v2/, bcrypt cost 5"),
        ("auth-cost10", "GET /v2/, bcrypt cost 10"),
        ("head-cost5", "HEAD blob, bcrypt cost 5"),
        ("head-cost10", "HEAD blob, bcrypt cost 10"),
    ):
        out += [
            Row(key, f"{title}, {c} conn.", "req/s", "rate"),
            Row(key, "", "p50 / p99 ms", "latency"),
            Row(key, "", "peak RSS MiB", "rss"),
        ]
    for n in plan.sweep:
        key = "auth-cost5" if n == c else f"sweep-c{n}"
        out.append(Row(key, f"GET /v2/, cost 5, {n} conn.", "req/s", "rate"))
    out += [
        Row("get-blob", f"GET {blob_mib:.0f} MiB blob", f"MB/s, median of {plan.get_runs}", "rate"),
        Row("get-blob", "", "peak RSS MiB", "rss"),
    ]
    out += [
        Row(f"parallel-{n}", f"{n} concurrent GETs of it", "peak RSS MiB", "rss")
        for n in plan.parallel_downloads
    ]
    out += [
        Row("push", f"skopeo push, {blob_mib:.0f} MiB layer", f"s, median of {plan.push_runs}",
            "seconds"),
        Row("push", "", "peak RSS MiB", "rss"),
    ]  # fmt: skip
    return out


def main_value(result: Result) -> float:
    for key in ("rps", "mbps", "seconds"):
        if key in result.metrics:
            return result.metrics[key]
    raise KeyError(f"{result.case} has no main metric")


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def cell(row: Row, results: dict[tuple[str, str], Result], target: str) -> str:
    result = results.get((row.case, target))
    if result is None:
        return "—"
    mark = " !" if result.note else ""
    if row.kind == "latency":
        return f"{number(result.metrics['p50_ms'])} / {number(result.metrics['p99_ms'])}"
    if row.kind == "rss":
        if result.rss is None:
            return "—"
        return f"{result.rss.tree_kib / 1024:.0f} ({result.rss.process_kib / 1024:.0f})"
    value = main_value(result)
    text = f"{number(value)} s" if row.kind == "seconds" else number(value)
    ratios = [
        f"{value / main_value(results[(row.case, base)]):.2f}x{base[0]}"
        for base in (DIRECT, LIMIT)
        if base != target and (row.case, base) in results
    ]
    return " · ".join([text + mark, *ratios])


def table(plan: Plan, results: list[Result], blob_mib: float) -> str:
    by_key = {(r.case, r.target): r for r in results}
    lines = [
        "| case | metric | " + " | ".join(TARGET_ORDER) + " |",
        "|---|---|" + "---:|" * len(TARGET_ORDER),
    ]
    for row in rows(plan, blob_mib):
        cells = [cell(row, by_key, target) for target in TARGET_ORDER]
        lines.append(f"| {row.label} | {row.metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    goal: str
    measured: str
    met: bool


def checks(results: list[Result], workers: int) -> list[Check]:
    """The issue's targets for regproxy, as ratios within this run."""
    by_key = {(r.case, r.target): r for r in results}

    def value(case: str, target: str) -> float:
        return main_value(by_key[(case, target)])

    out = []
    for case in ("auth-cost5", "auth-cost10", "head-cost5", "head-cost10"):
        ratio = value(case, "regproxy") / value(case, LIMIT)
        out.append(Check(f"{case}: ≥ 1.0x limit req/s", f"{ratio:.2f}x", ratio >= 1.0))
    best = max(("nginx", "nginx-tuned", "apache"), key=lambda t: value("get-blob", t))
    ratio = value("get-blob", "regproxy") / value("get-blob", best)
    out.append(Check(f"GET blob: ≥ 2x best of nginx/apache ({best})", f"{ratio:.2f}x", ratio >= 2))
    ratio = value("push", "regproxy") / value("push", DIRECT)
    out.append(Check("push: ≤ 1.1x direct time", f"{ratio:.2f}x", ratio <= 1.1))
    ratio = value("anonymous", "regproxy") / value("anonymous", "apache")
    out.append(Check("anonymous 401: ≥ 1.5x apache req/s", f"{ratio:.2f}x", ratio >= 1.5))
    peaks = [r.rss for r in results if r.target == "regproxy" and r.rss is not None]
    largest = max(p.process_kib for p in peaks) / 1024
    out.append(Check("peak RSS ≤ 48 MiB per process", f"{largest:.1f} MiB", largest <= 48))
    parallel = sorted(
        (int(r.case.split("-")[1]), r.rss.tree_kib / 1024)
        for r in results
        if r.target == "regproxy" and r.case.startswith("parallel-") and r.rss is not None
    )
    (low, low_mib), (high, high_mib) = parallel[0], parallel[-1]
    per_download = (high_mib - low_mib) / (high - low)
    out.append(Check(
        "RSS flat: ≤ 1 MiB more per added concurrent download",
        f"{low_mib:.0f} → {high_mib:.0f} MiB from {low} to {high} downloads "
        f"({per_download:.2f} MiB each; {workers} workers)", per_download <= 1.0,
    ))  # fmt: skip
    return out


def chart(plan: Plan, results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(r.case, r.target): r for r in results}
    palette = plt.get_cmap("tab10")
    colors = {target: palette(i) for i, target in enumerate(TARGET_ORDER)}
    figure, axes = plt.subplots(2, 3, figsize=(18, 10))

    def grouped(ax: Any, cases: Sequence[str], metric: str, title: str) -> None:
        width = 0.8 / len(TARGET_ORDER)
        for i, target in enumerate(TARGET_ORDER):
            xs, ys = [], []
            for j, case in enumerate(cases):
                if (case, target) in by_key:
                    xs.append(j + i * width)
                    ys.append(by_key[(case, target)].metrics[metric])
            ax.bar(xs, ys, width, label=target, color=colors[target])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, fontsize=8)
        ax.set_title(title)

    rate_cases = ["anonymous", "auth-cost5", "auth-cost10", "head-cost5", "head-cost10"]
    grouped(axes[0][0], rate_cases, "rps", f"requests/s, {plan.main_concurrency} connections")
    axes[0][0].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    grouped(axes[0][1], rate_cases, "p99_ms", "p99 latency, ms")
    axes[0][1].set_yscale("log")
    sweep = axes[0][2]
    for target in TARGET_ORDER:
        keys = ["auth-cost5" if n == plan.main_concurrency else f"sweep-c{n}" for n in plan.sweep]
        sweep.plot(plan.sweep, [by_key[(k, target)].metrics["rps"] for k in keys], "o-",
                   label=target, color=colors[target])  # fmt: skip
    sweep.set_xscale("log")
    sweep.set_xticks(plan.sweep, [str(n) for n in plan.sweep])
    sweep.set_title("GET /v2/ cost 5: requests/s by connections")
    grouped(axes[1][0], ["get-blob"], "mbps", "GET blob, MB/s (median)")
    grouped(axes[1][1], ["push"], "seconds", "skopeo push, seconds (median)")
    memory = axes[1][2]
    for target in TARGET_ORDER:
        points = [
            (n, by_key[(f"parallel-{n}", target)])
            for n in plan.parallel_downloads
            if (f"parallel-{n}", target) in by_key
        ]
        if points:
            memory.plot([n for n, _ in points],
                        [r.rss.tree_kib / 1024 if r.rss else 0 for _, r in points], "o-",
                        label=target, color=colors[target])  # fmt: skip
    memory.set_xticks(plan.parallel_downloads, [str(n) for n in plan.parallel_downloads])
    memory.set_title("front end peak RSS (MiB, whole tree) by concurrent blob GETs")
    figure.suptitle(f"regproxy bench ({plan.name})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


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
    plan: Plan, workers: int, targets: dict[str, Target], fixtures: Fixtures,
    results: list[Result], started: float,
) -> str:  # fmt: skip
    """Print the markdown report and write it, the JSON and the chart under bench/results/."""
    blob_mib = fixtures.layer_size / MIB
    met = checks(results, workers)
    wall = time.monotonic() - started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        f"## regproxy bench ({plan.name}, {stamp})",
        "",
        f"{os.cpu_count()} CPUs, {platform.platform()}; regproxy with {workers} workers; "
        f"wrk 1 thread, {plan.rate_seconds}s per case and target; blob {fixtures.layer_size:,} "
        f"bytes; {wall:.0f}s wall.",
        "",
        table(plan, results, blob_mib),
        "",
        "Cells: value · xd ratio to direct · xl ratio to limit (for seconds, lower is better). "
        "RSS: whole process tree (largest single process), peak over the case. "
        "direct and limit do not authenticate: their 'without credentials' answers are 200s. "
        "! = unexpected errors, see the JSON.",
        "",
        "Targets for regproxy (issue 5):",
        "",
        *(f"- {'met' if c.met else 'NOT met'}: {c.goal}: {c.measured}" for c in met),
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "date": stamp,
        "plan": asdict(plan),
        "wall_seconds": wall,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(workers),
        "blob": {"digest": fixtures.layer_digest, "bytes": fixtures.layer_size},
        "targets": {name: {"what": t.what, "url": t.url} for name, t in targets.items()},
        "results": [asdict(r) for r in results],
        "checks": [asdict(c) for c in met],
    }
    for name in (stamp, "latest"):
        (RESULTS / f"{name}.md").write_text(text)
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    chart(plan, results, RESULTS / f"{stamp}.png")
    shutil.copy(RESULTS / f"{stamp}.png", RESULTS / "latest.png")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute: shorter, smaller")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="regproxy worker processes (default: the number of CPUs)")  # fmt: skip
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C does, through the `finally` that stops what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="regproxy-bench-"))
    workdir.chmod(0o755)  # nginx and Apache workers (nobody, daemon) read the user files
    processes = Processes()
    try:
        fixtures = make_fixtures(workdir, plan)
        targets = start_targets(workdir, fixtures, args.workers, processes)
        bench = Bench(plan, targets, fixtures, workdir)
        bench.run()
    finally:
        log("stopping what was started")
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(plan, args.workers, targets, fixtures, bench.results, started), end="")
    log(f"wrote {RESULTS}/latest.md, .json and .png in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
