#!/usr/bin/env python3
"""Soak test: concurrent pushes and pulls through the real `regproxy serve`, nothing lost.

Starts, on free 127.0.0.1 ports in one temp dir, a real docker-registry and `python -m proxy
serve` in front of it (TLS, htpasswd -B users, an ACL giving each pusher its own `${user}/**`
namespace and everyone pull on everything). Then workers loop for a bounded time:

- pushers build small OCI images with unique random content (64 KiB - 8 MiB, sometimes two
  layers), push them with skopeo (TLS verified against the test CA only, a private blob-info
  cache per worker), push earlier images again to new repositories (cross-repo mounts and
  existing-blob skips), and try to push into someone else's namespace (must be refused);
- pullers copy random pushed tags back with skopeo and check the manifest digest and every
  blob's sha256 and size against what was pushed;
- raw HTTP workers HEAD and GET blobs and manifests (hashing what they read), list tags, page
  through the catalog, and try what must be refused: uploads and deletes outside one's own
  namespace (403), wrong passwords and unknown users (401).

The proxy's RSS and open file descriptors are sampled throughout. "start" and "end" are taken
in the same state: right after a warm-up run of the same workload (and after the soak), once
every client and upstream connection has closed (the soak's config sets timeouts.keepalive
to 5 s, so the idle upstream pool empties quickly), so an idle proxy is compared with an idle
proxy. Exit status 1 when any operation failed, the proxy logged a traceback or answered 5xx,
or fds/RSS grew beyond the allowed noise:

- open fds: end <= start + 2 (--fd-slack). Idle, the count is deterministic (two listeners,
  the event loop's self-pipe and poller, stdio and log files: 17 with one worker) and was
  identical at start and end in every run, from 15 s to 20 min. A 2-minute run opens
  thousands of connections, so leaking anything per connection or request adds hundreds;
  2 only tolerates a one-off, lazily created descriptor.
- RSS: end <= start + 10 MiB per proxy process (--rss-slack-mib). After the warm-up, RSS
  grew 1.1-1.8 MiB in runs of 15 s and 2 min (3.3 MiB in 6 min, 6.6 MiB in 20 min: a
  sublinear drift, ~100 then ~70 bytes per request, outside the Python heap, which
  tracemalloc shows flat). 10 MiB is 5x the 2-minute noise and still catches ~1.3 KiB leaked per
  request (a 2-minute run makes ~8,000), i.e. any leaked connection, request object or
  transfer buffer. For runs much longer than 20 minutes, raise it or compare
  rss_growth_kib_per_1000_requests.

    scripts/soak.py [--minutes 2] [--workers 6] [--seed N] [--json bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

from devtools.net import free_port
from devtools.processes import Children, CommandError, Proc, process_tree, rss_kib, start, stop
from devtools.registry import MANIFEST_ACCEPT, OCI_MANIFEST, Registry, write_htpasswd
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles, make_tls, wait_for_tls

KIB, MIB = 1024, 1024 * 1024
PUSHERS = ("alice", "bob", "carol")  # group pusher: each owns ${user}/**
READERS = ("dave", "erin")  # pull only
ROLE_CYCLE = ("pusher", "puller", "raw", "pusher", "puller", "puller")
ACL = """acl:
  - groups: [pusher]
    repositories: ["${user}/**"]
    actions: [pull, push, delete]
  - repositories: ["**"]
    actions: [pull]
"""
RAW_WEIGHTS = (  # a raw HTTP worker's round: (times, operation)
    (3, "head_blob"),
    (2, "get_blob"),
    (2, "get_manifest"),
    (2, "tags_list"),
    (1, "catalog"),
    (1, "upload_denied"),
    (1, "delete_denied"),
    (1, "wrong_password"),
)
REPOS = ("app0", "app1", "app2", "team/app")  # under each pusher's namespace
NOISE_BYTES = 16 * MIB  # random bytes every layer slices its content from
ROOT = Path(__file__).resolve().parents[1]
MIN_LAYER, MAX_LAYER = 64 * KIB, 8 * MIB
COMMAND_TIMEOUT = 180.0
DEFAULT_JSON = ROOT / "bench/results/soak.json"


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Image:
    """What was pushed: the manifest digest and every blob it references (config, layers)."""

    manifest_digest: str
    manifest_size: int
    blobs: dict[str, int]  # digest -> size
    layout: Path | None = None  # the pusher's local OCI layout, while it is kept

    @property
    def size(self) -> int:
        return self.manifest_size + sum(self.blobs.values())


def _put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer_size(rng: random.Random) -> int:
    """Log-uniform between MIN_LAYER and MAX_LAYER: mostly small, some large."""
    return int(math.exp(rng.uniform(math.log(MIN_LAYER), math.log(MAX_LAYER))))


def build_image(layout: Path, rng: random.Random, noise: bytes, serial: str) -> Image:
    """An OCI layout (tag `latest`) like harness.make_oci_layout's, with 1 or 2 layers.

    Each layer is a tar of one file: a unique header plus a slice of `noise` at a random
    offset, gzipped at level 0 (stored: valid gzip at memcpy speed, so building costs little
    CPU next to the proxy). Every layer digest is therefore new.
    """
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    sizes = [layer_size(rng)]
    if rng.random() < 0.3:
        sizes.append(layer_size(rng))
    layers: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for number, size in enumerate(sizes):
        offset = rng.randrange(len(noise) - size + 1)
        header = f"{serial}/{number}/{rng.getrandbits(64):016x}\n".encode()
        payload = header + noise[offset : offset + size]
        tar_bytes = io.BytesIO()
        with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
            info = tarfile.TarInfo(f"data-{number}.bin")
            info.size, info.mode, info.mtime = len(payload), 0o644, 0
            tar.addfile(info, io.BytesIO(payload))
        raw = tar_bytes.getvalue()
        diff_ids.append(f"sha256:{hashlib.sha256(raw).hexdigest()}")
        blob = _put_blob(layout, gzip.compress(raw, compresslevel=0, mtime=0))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob})
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"soak.serial": serial}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _put_blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    desc = _put_blob(layout, manifest_bytes)
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                **desc,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    blobs = {config_desc["digest"]: config_desc["size"]}
    blobs.update({layer["digest"]: layer["size"] for layer in layers})
    return Image(str(desc["digest"]), len(manifest_bytes), blobs, layout)


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
            size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size


# --------------------------------------------------------------------------- measuring


def tcp_states() -> dict[str, str]:
    """Socket inode -> TCP state (hex, 0A = LISTEN) for this network namespace; other
    sockets (the event loop's AF_UNIX self-pipe) are not in these tables."""
    states: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) > 9:
                    states[fields[9]] = fields[3]
    return states


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss_kib: int
    fds: int
    kinds: dict[str, int]  # tcp-listen, tcp-conn, socket (unix), pipe, anon, file
    processes: int = 1

    @property
    def connections(self) -> int:
        """TCP connections the proxy holds: clients' and its upstream pool's."""
        return self.kinds.get("tcp-conn", 0)


def sample(root: int, t0: float) -> Sample:
    """RSS and open fds summed over the proxy's process tree."""
    states = tcp_states()
    rss, fds, kinds = 0, 0, Counter[str]()
    tree = process_tree(root)
    for pid in tree:
        rss += rss_kib(pid)
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue  # closed meanwhile
            fds += 1
            if target.startswith("socket:["):
                state = states.get(target[8:-1])
                kinds["tcp-listen" if state == "0A" else "tcp-conn" if state else "socket"] += 1
            elif target.startswith("pipe:"):
                kinds["pipe"] += 1
            elif target.startswith("anon_inode:"):
                kinds["anon"] += 1
            else:
                kinds["file"] += 1
    return Sample(round(time.monotonic() - t0, 1), rss, fds, dict(kinds), len(tree))


# --------------------------------------------------------------------------- statistics


class Failed(Exception):
    """An operation did not give the expected result."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


class Stats:
    """Per-phase counters, shared by all workers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.seconds: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.bytes: Counter[str] = Counter()
        self.verified: Counter[str] = Counter()
        self.elapsed = 0.0

    def success(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.ok[kind] += 1
            self.seconds.setdefault(kind, []).append(seconds)

    def error(self, kind: str, seconds: float, message: str) -> None:
        with self._lock:
            self.failed[kind] += 1
            self.seconds.setdefault(kind, []).append(seconds)
            self.errors.append(f"{self.name} {kind}: {message.strip()[:600]}")

    def add(self, counter: str, amount: int, verified: bool = False) -> None:
        with self._lock:
            (self.verified if verified else self.bytes)[counter] += amount

    def reached(self, least: dict[str, int]) -> bool:
        with self._lock:
            return all(self.ok[kind] >= count for kind, count in least.items())

    def operations(self) -> dict[str, dict[str, float]]:
        result = {}
        for kind in sorted(set(self.ok) | set(self.failed)):
            times = sorted(self.seconds.get(kind, [0.0]))
            result[kind] = {
                "ok": self.ok[kind],
                "errors": self.failed[kind],
                "p50_s": round(times[len(times) // 2], 3),
                "p95_s": round(times[min(len(times) - 1, int(len(times) * 0.95))], 3),
                "max_s": round(times[-1], 3),
            }
        return result

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.elapsed, 1),
            "operations": self.operations(),
            "total_ok": sum(self.ok.values()),
            "errors": sum(self.failed.values()),
            "error_messages": self.errors[:10],
            "bytes": dict(self.bytes),
            "verified": dict(self.verified),
        }


# --------------------------------------------------------------------------- HTTP


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes
    sha256: str = ""
    length: int = 0


class Http:
    """urllib against the proxy: TLS verified with the test CA, no env proxies, no
    keep-alive (every request is a new TLS connection: accept/close paths get exercised)."""

    def __init__(self, base: str, context: ssl.SSLContext) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def request(
        self,
        method: str,
        path: str,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> Answer:
        """One request; with stream=True the body is hashed chunk by chunk, not kept."""
        req = urllib.request.Request(self.base + path, method=method, headers=dict(headers or {}))
        if auth:
            token = base64.b64encode(":".join(auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            response = self._opener.open(req, timeout=60)
        except urllib.error.HTTPError as err:
            with err:
                return Answer(err.code, err.headers, err.read())
        with response:
            if not stream:
                body = response.read()
                return Answer(response.status, response.headers, body, "", len(body))
            digest, length = hashlib.sha256(), 0
            while chunk := response.read(256 * KIB):
                digest.update(chunk)
                length += len(chunk)
            return Answer(response.status, response.headers, b"", digest.hexdigest(), length)


# --------------------------------------------------------------------------- the soak


@dataclass
class Options:
    minutes: float = 2.0
    workers: int = 6
    seed: int = 0
    warmup: float = 15.0
    proxy_workers: int = 1
    keepalive: float = 5.0
    fd_slack: int = 2
    rss_slack_mib: float = 10.0
    json_path: Path = DEFAULT_JSON
    keep: bool = False
    # kind -> successes the soak phase goes on past its minutes for (a short run on a busy
    # machine still does every kind it is asked to)
    least: dict[str, int] = field(default_factory=dict)


@dataclass
class Pushed:
    repo: str
    tag: str
    owner: str
    image: Image


@dataclass
class Shared:
    """What has been pushed successfully so far; read by pullers and raw workers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    images: list[Pushed] = field(default_factory=list)
    tags: dict[str, set[str]] = field(default_factory=dict)  # repo -> tags pushed
    serial: int = 0

    def add(self, pushed: Pushed) -> None:
        with self.lock:
            self.images.append(pushed)
            self.tags.setdefault(pushed.repo, set()).add(pushed.tag)

    def pick(self, rng: random.Random) -> Pushed | None:
        with self.lock:
            return rng.choice(self.images) if self.images else None

    def next_serial(self) -> int:
        with self.lock:
            self.serial += 1
            return self.serial

    def snapshot(self) -> dict[str, set[str]]:
        with self.lock:
            return {repo: set(tags) for repo, tags in self.tags.items()}


class Worker:
    """One thread: a pusher (own namespace), a puller (skopeo) or a raw HTTP client."""

    def __init__(self, soak: Soak, index: int, role: str, user: str) -> None:
        self.soak, self.index, self.role, self.user = soak, index, role, user
        self.rng = random.Random(soak.options.seed * 1000 + index)
        self.dir = soak.workdir / f"worker{index}-{role}"
        # A private HOME: its own blob-info cache.
        self.skopeo = Skopeo(self.dir / "skopeo", timeout=COMMAND_TIMEOUT, children=soak.children)
        self.http = Http(soak.base_url, soak.tls.client_context())
        self.recent: list[Image] = []  # this pusher's images whose layouts are still on disk
        self.done = 0  # operations chosen so far
        self.round: list[str] = []  # a raw worker's operations left in this round

    # ---- the loop

    def choose(self) -> tuple[str, Callable[[Stats], None]]:
        """The next operation. Fixed rounds rather than coin flips, so that even a short run
        does every kind: a pusher pushes new images 5 times in 8, an earlier image again
        twice, into someone else's namespace once; a raw worker goes through a shuffled
        round of its weighted kinds."""
        self.done += 1
        if self.role == "pusher":
            step = self.done % 8
            if self.recent and step == 3:
                return "push_denied", self.push_denied
            if self.recent and step in (1, 5):
                return "push_existing", self.push_existing
            return "push", self.push
        if self.role == "puller":
            return "pull", self.pull
        if not self.round:
            self.round = [kind for weight, kind in RAW_WEIGHTS for _ in range(weight)]
            self.rng.shuffle(self.round)
        kind = self.round.pop()
        operation: Callable[[Stats], None] = getattr(self, kind)
        return kind, operation

    def loop(
        self, stats: Stats, stop: threading.Event, deadline: float, least: dict[str, int]
    ) -> None:
        while not stop.is_set() and (time.monotonic() < deadline or not stats.reached(least)):
            if self.role != "pusher" and not self.soak.shared.images:
                time.sleep(0.1)  # nothing to pull yet
                continue
            kind, operation = self.choose()
            started = time.monotonic()
            try:
                operation(stats)
            except Failed as exc:
                stats.error(kind, time.monotonic() - started, str(exc))
            except Exception as exc:
                if stop.is_set() and self.soak.children.closed:
                    return  # interrupted: not an error of the proxy
                timeout = isinstance(exc, CommandError)  # a command ran out of time
                message = str(exc) if timeout else traceback.format_exc(limit=4)
                stats.error(kind, time.monotonic() - started, message)
            else:
                stats.success(kind, time.monotonic() - started)

    # ---- helpers

    def creds(self, user: str) -> str:
        return f"{user}:{self.soak.passwords[user]}"

    def auth(self, user: str) -> tuple[str, str]:
        return user, self.soak.passwords[user]

    def skopeo_copy(self, *args: str) -> Proc:
        return self.skopeo.run("copy", *args)

    def new_tag(self) -> str:
        return f"t{self.soak.shared.next_serial()}-w{self.index}"

    def push_to(self, image: Image, repo: str, tag: str) -> Proc:
        assert image.layout is not None
        digestfile = self.dir / "digest"
        digestfile.unlink(missing_ok=True)
        proc = self.skopeo_copy(
            "--dest-creds", self.creds(self.user),
            "--dest-cert-dir", str(self.soak.tls.cert_dir),
            "--digestfile", str(digestfile),
            f"oci:{image.layout}:latest",
            f"docker://{self.soak.hostport}/{repo}:{tag}",
        )  # fmt: skip
        if proc.returncode == 0:
            got = digestfile.read_text().strip() if digestfile.exists() else "(no digest file)"
            pushed = image.manifest_digest
            check(got == pushed, f"{repo}:{tag}: pushed {pushed}, the registry says {got}")
        return proc

    # ---- pusher operations

    def push(self, stats: Stats) -> None:
        serial = self.new_tag()
        layout = self.dir / f"layout-{serial}"
        image = build_image(layout, self.rng, self.soak.noise, f"{self.user}/{serial}")
        self.recent.append(image)
        while len(self.recent) > 3:
            old = self.recent.pop(0)
            if old.layout:
                shutil.rmtree(old.layout, ignore_errors=True)
        repo = f"{self.user}/{self.rng.choice(REPOS)}"
        proc = self.push_to(image, repo, serial)
        check(proc.returncode == 0, f"push {repo}:{serial}: exit {proc.returncode}\n{proc.stderr}")
        self.soak.shared.add(Pushed(repo, serial, self.user, image))
        stats.add("pushed", image.size)

    def push_existing(self, stats: Stats) -> None:
        """An image this worker pushed before, to a (maybe) other repo under a new tag: its
        blob-info cache turns the blobs into cross-repo mounts or existing-blob skips."""
        image = self.rng.choice(self.recent)
        repo, tag = f"{self.user}/{self.rng.choice(REPOS)}", self.new_tag()
        proc = self.push_to(image, repo, tag)
        check(proc.returncode == 0, f"push {repo}:{tag}: exit {proc.returncode}\n{proc.stderr}")
        self.soak.shared.add(Pushed(repo, tag, self.user, image))

    def push_denied(self, stats: Stats) -> None:
        """Into another user's namespace: skopeo must fail with 403 and nothing may appear."""
        image = self.rng.choice(self.recent)
        victim = self.rng.choice([u for u in (*PUSHERS, *READERS) if u != self.user])
        repo, tag = f"{victim}/denied", self.new_tag()
        proc = self.push_to(image, repo, tag)
        check(proc.returncode != 0, f"push into {repo}:{tag} as {self.user} succeeded")
        text = proc.stderr.lower()
        check("denied" in text or "403" in text, f"push into {repo}: not a 403:\n{proc.stderr}")
        answer = self.http.request(
            "HEAD", f"/v2/{repo}/manifests/{tag}", self.auth(victim), {"Accept": MANIFEST_ACCEPT}
        )
        check(answer.status == 404, f"{repo}:{tag} after a refused push: HTTP {answer.status}")

    # ---- puller operations

    def pull(self, stats: Stats) -> None:
        pushed = self.soak.shared.pick(self.rng)
        assert pushed is not None
        user = self.rng.choice((*PUSHERS, *READERS))
        dest = self.dir / f"pull-{self.soak.shared.next_serial()}"
        try:
            proc = self.skopeo_copy(
                "--src-creds", self.creds(user),
                "--src-cert-dir", str(self.soak.tls.cert_dir),
                f"docker://{self.soak.hostport}/{pushed.repo}:{pushed.tag}",
                f"oci:{dest}:{pushed.tag}",
            )  # fmt: skip
            where = f"{pushed.repo}:{pushed.tag} as {user}"
            check(proc.returncode == 0, f"pull {where}: exit {proc.returncode}\n{proc.stderr}")
            verified = self.verify_layout(dest, pushed, where)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        stats.add("pulled", verified)
        stats.add("manifests", 1, verified=True)
        stats.add("blobs", len(pushed.image.blobs), verified=True)

    def verify_layout(self, dest: Path, pushed: Pushed, where: str) -> int:
        """Manifest digest and every blob's sha256 and size; returns the bytes checked."""
        image = pushed.image
        index = json.loads((dest / "index.json").read_text())
        entries = [
            m
            for m in index.get("manifests", [])
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == pushed.tag
        ]
        check(len(entries) == 1, f"{where}: {len(entries)} manifests for the tag in index.json")
        digest = entries[0]["digest"]
        expected = image.manifest_digest
        check(digest == expected, f"{where}: manifest {digest}, pushed {expected}")
        manifest_path = dest / "blobs/sha256" / digest.removeprefix("sha256:")
        got, size = file_sha256(manifest_path)
        check(got == digest, f"{where}: manifest file hashes to {got}")
        manifest = json.loads(manifest_path.read_bytes())
        referenced = {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}
        check(referenced == image.blobs, f"{where}: references {referenced}, not {image.blobs}")
        total = size
        for blob, pushed_size in image.blobs.items():
            got, length = file_sha256(dest / "blobs/sha256" / blob.removeprefix("sha256:"))
            problem = f"{where}: blob {blob} is {got}, {length} bytes (pushed {pushed_size})"
            check(got == blob and length == pushed_size, problem)
            total += length
        return total

    # ---- raw HTTP operations

    def any_user(self) -> str:
        return self.rng.choice((*PUSHERS, *READERS))

    def pick_blob(self) -> tuple[Pushed, str, int]:
        pushed = self.soak.shared.pick(self.rng)
        assert pushed is not None
        blob = self.rng.choice(sorted(pushed.image.blobs))
        return pushed, blob, pushed.image.blobs[blob]

    def head_blob(self, stats: Stats) -> None:
        pushed, blob, size = self.pick_blob()
        path = f"/v2/{pushed.repo}/blobs/{blob}"
        answer = self.http.request("HEAD", path, self.auth(self.any_user()))
        check(answer.status == 200, f"HEAD {path}: HTTP {answer.status}")
        length = answer.headers.get("Content-Length")
        check(length == str(size), f"HEAD {path}: Content-Length {length}, pushed {size}")
        digest = answer.headers.get("Docker-Content-Digest")
        check(digest == blob, f"HEAD {path}: Docker-Content-Digest {digest}")

    def get_blob(self, stats: Stats) -> None:
        pushed, blob, size = self.pick_blob()
        answer = self.http.request(
            "GET", f"/v2/{pushed.repo}/blobs/{blob}", self.auth(self.any_user()), stream=True
        )
        where = f"GET {pushed.repo}@{blob}"
        check(answer.status == 200, f"{where}: HTTP {answer.status}")
        got = f"sha256:{answer.sha256}"
        check(got == blob and answer.length == size, f"{where}: {got}, {answer.length} bytes")
        stats.add("raw_get", answer.length)
        stats.add("blobs", 1, verified=True)

    def get_manifest(self, stats: Stats) -> None:
        pushed = self.soak.shared.pick(self.rng)
        assert pushed is not None
        path = f"/v2/{pushed.repo}/manifests/{pushed.tag}"
        accept = {"Accept": MANIFEST_ACCEPT}
        answer = self.http.request("GET", path, self.auth(self.any_user()), accept)
        check(answer.status == 200, f"GET {path}: HTTP {answer.status}")
        digest = f"sha256:{hashlib.sha256(answer.body).hexdigest()}"
        expected = pushed.image.manifest_digest
        check(digest == expected, f"GET {path}: body {digest}, pushed {expected}")
        header = answer.headers.get("Docker-Content-Digest")
        check(header == expected, f"GET {path}: Docker-Content-Digest {header}")
        stats.add("manifests", 1, verified=True)

    def tags_list(self, stats: Stats) -> None:
        known = self.soak.shared.snapshot()
        repo = self.rng.choice(sorted(known))
        answer = self.http.request("GET", f"/v2/{repo}/tags/list", self.auth(self.any_user()))
        check(answer.status == 200, f"tags/list {repo}: HTTP {answer.status}")
        body = json.loads(answer.body)
        check(body.get("name") == repo, f"tags/list {repo}: name {body.get('name')!r}")
        missing = known[repo] - set(body.get("tags") or [])
        check(not missing, f"tags/list {repo}: pushed tags missing: {sorted(missing)[:5]}")

    def catalog(self, stats: Stats) -> None:
        """Page through /v2/_catalog with a small n, following Link: sorted, no duplicates,
        every repository pushed so far, nothing from a refused push."""
        known = set(self.soak.shared.snapshot())
        user = self.any_user()
        path: str | None = f"/v2/_catalog?n={self.rng.randint(1, 5)}"
        seen: list[str] = []
        pages = 0
        while path is not None:
            pages += 1
            check(pages < 1000, "catalog: more than 1000 pages")
            answer = self.http.request("GET", path, self.auth(user))
            check(answer.status == 200, f"GET {path}: HTTP {answer.status}")
            seen.extend(json.loads(answer.body).get("repositories") or [])
            path = self.next_link(answer.headers.get("Link"))
        check(seen == sorted(set(seen)), f"catalog: not sorted or duplicated: {seen[:20]}")
        missing = known - set(seen)
        check(not missing, f"catalog as {user}: pushed repositories missing: {sorted(missing)}")
        foreign = [r for r in seen if r.split("/")[0] not in PUSHERS or r.endswith("/denied")]
        check(not foreign, f"catalog: repositories nobody may push to: {foreign}")
        stats.add("catalog_pages", pages, verified=True)

    def next_link(self, link: str | None) -> str | None:
        if not link:
            return None
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
        check(match, f"catalog: bad Link header {link!r}")
        assert match is not None
        target = urllib.parse.urlsplit(match.group(1))
        if target.netloc:  # absolute: must point at the proxy, never at the registry
            check(target.netloc == self.soak.hostport, f"catalog: Link to {match.group(1)}")
        return target.path + (f"?{target.query}" if target.query else "")

    def upload_denied(self, stats: Stats) -> None:
        """A pusher outside its namespace, or a pull-only user anywhere: 403 DENIED."""
        user = self.any_user()
        owner = self.rng.choice([u for u in (*PUSHERS, *READERS) if u != user or u in READERS])
        path = f"/v2/{owner}/app0/blobs/uploads/"
        answer = self.http.request("POST", path, self.auth(user))
        check(answer.status == 403, f"POST {path} as {user}: HTTP {answer.status}, not 403")
        check(b"DENIED" in answer.body, f"POST {path} as {user}: body {answer.body[:200]!r}")

    def delete_denied(self, stats: Stats) -> None:
        pushed = self.soak.shared.pick(self.rng)
        assert pushed is not None
        user = self.rng.choice([u for u in (*PUSHERS, *READERS) if u != pushed.owner])
        path = f"/v2/{pushed.repo}/manifests/{pushed.image.manifest_digest}"
        answer = self.http.request("DELETE", path, self.auth(user))
        check(answer.status == 403, f"DELETE {path} as {user}: HTTP {answer.status}, not 403")

    def wrong_password(self, stats: Stats) -> None:
        """401 with a Basic challenge; then the right password works at once (which also
        resets the per-address failure count: the soak's clients all share 127.0.0.1)."""
        user = self.any_user()
        if self.rng.random() < 0.5:
            attempt = (user, self.soak.passwords[user] + "x")
        else:
            attempt = (f"mallory{self.rng.randrange(1000)}", secrets.token_hex(6))
        answer = self.http.request("GET", "/v2/", attempt)
        who = attempt[0]
        check(answer.status == 401, f"GET /v2/ as {who}, wrong password: HTTP {answer.status}")
        challenge = answer.headers.get("WWW-Authenticate") or ""
        check(challenge.startswith("Basic "), f"401 without a Basic challenge: {challenge!r}")
        answer = self.http.request("GET", "/v2/", self.auth(user))
        check(answer.status == 200, f"GET /v2/ as {user} after a failure: HTTP {answer.status}")


class Soak:
    """Everything the soak starts lives in `workdir` and is stopped by `close()`."""

    tls: TlsFiles  # made by start()

    def __init__(self, options: Options, workdir: Path) -> None:
        self.options, self.workdir = options, workdir
        self.t0 = time.monotonic()
        self.children = Children()
        self.shared = Shared()
        self.samples: list[Sample] = []
        self.registry: Registry | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.proxy_rc: int | None = None
        self.proxy_dir = workdir / "proxy"
        self.port = self.metrics_port = 0
        self.passwords: dict[str, str] = {}
        self.noise = random.Random(options.seed).randbytes(NOISE_BYTES)
        self.workers: dict[int, Worker] = {}
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.hostport}"

    # ---- start and stop

    def start(self) -> None:
        self.tls = make_tls(self.workdir / "tls")
        self.registry = Registry(self.workdir / "registry")
        log(f"docker-registry on {self.registry.url}")
        self.passwords = {user: secrets.token_urlsafe(12) for user in (*PUSHERS, *READERS)}
        self.passwords["bob"] += ":with:colons"  # Basic splits at the first colon only
        directory = self.proxy_dir
        directory.mkdir(parents=True)
        write_htpasswd(directory / "htpasswd", self.passwords)  # htpasswd -B (bcrypt)
        (directory / "groups").write_text(f"pusher: {' '.join(PUSHERS)}\n")
        (directory / "acl.yaml").write_text(ACL)
        for attempt in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            config = directory / "regproxy.yaml"
            config.write_text(
                f"listen: 127.0.0.1:{self.port}\nupstream: {self.registry.url}\n"
                "htpasswd: htpasswd\ngroups: groups\nacl: acl.yaml\n"
                f"tls:\n  cert: {self.tls.server_cert}\n  key: {self.tls.server_key}\n"
                f"workers: {self.options.proxy_workers}\n"
                "access_log:\n  format: common\n  path: access.log\naudit_log: audit.log\n"
                f"metrics:\n  listen: 127.0.0.1:{self.metrics_port}\n"
                f"timeouts:\n  keepalive: {self.options.keepalive}\n"
                # Every client is 127.0.0.1 here: the per-address throttle would lock them
                # all out after the deliberate wrong passwords (make test covers throttling).
                "throttle:\n  attempts: 1000000\n"
            )
            pythonpath = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
            argv = [sys.executable, "-m", "proxy", "serve", "-c", str(config)]
            self.proxy = start(argv, directory / "regproxy.err", env=env, cwd=directory,
                               append=True)  # fmt: skip
            if self._wait_for_proxy():
                break
            log(f"regproxy did not start (attempt {attempt + 1}):\n{self.proxy_log()[-2000:]}")
            self._stop_proxy()
        else:
            raise RuntimeError("regproxy did not start")
        log(f"regproxy (pid {self.proxy.pid}) on {self.base_url}")
        http = Http(self.base_url, self.tls.client_context())
        for user in self.passwords:  # every user logs in once from 127.0.0.1 (known good)
            status = http.request("GET", "/v2/", (user, self.passwords[user])).status
            if status != 200:
                raise RuntimeError(f"GET /v2/ as {user}: HTTP {status}")

    def _wait_for_proxy(self) -> bool:
        assert self.proxy is not None
        try:
            wait_for_tls(self.port, self.tls.client_context(), self.proxy, 20)
        except RuntimeError:
            return False
        return True

    def proxy_log(self) -> str:
        path = self.proxy_dir / "regproxy.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def _stop_proxy(self) -> None:
        proc = self.proxy
        if proc is None:
            return
        # Graceful: drain, exit 0 (the parent relays SIGTERM to its workers).
        self.proxy_rc = stop(proc, 40)

    def close(self) -> None:
        self._sampling.set()
        self.children.kill_all()
        self._stop_proxy()
        if self.registry is not None:
            self.registry.stop()

    # ---- measuring

    def sample_now(self) -> Sample:
        assert self.proxy is not None
        taken = sample(self.proxy.pid, self.t0)
        self.samples.append(taken)
        return taken

    def _sample_loop(self) -> None:
        while not self._sampling.wait(1.0):
            if self.proxy is not None and self.proxy.poll() is None:
                self.sample_now()

    def start_sampling(self) -> None:
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def settle(self) -> Sample:
        """Wait until the idle proxy holds no connection (clients gone, the upstream pool
        expired after `timeouts.keepalive`), then sample. Bounded: a proxy that keeps
        connections open is sampled anyway, and the fd check reports it."""
        assert self.proxy is not None
        deadline = time.monotonic() + 3 * self.options.keepalive + 10
        while True:
            taken = sample(self.proxy.pid, self.t0)
            if taken.connections == 0 or time.monotonic() > deadline:
                self.samples.append(taken)
                return taken
            time.sleep(0.25)

    def metrics(self) -> dict[str, float]:
        """regproxy's own counters (`name{labels}` -> value) from its /metrics listener."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=10) as response:
                text = response.read().decode()
        except OSError as exc:
            raise Failed(f"GET {url}: {exc}") from None
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("regproxy_") and "_created" not in line.split(" ")[0]:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    # ---- phases

    def run_phase(
        self,
        name: str,
        seconds: float,
        roles: Sequence[str],
        phases: list[Stats],
        least: dict[str, int] | None = None,
    ) -> Stats:
        stats = Stats(name)
        phases.append(stats)
        stop = threading.Event()
        deadline = time.monotonic() + seconds
        threads = []
        pushers = 0
        for index, role in enumerate(roles):
            user = PUSHERS[pushers % len(PUSHERS)] if role == "pusher" else "-"
            pushers += role == "pusher"
            worker = self.workers.get(index) or Worker(self, index, role, user)
            self.workers[index] = worker
            thread = threading.Thread(
                target=worker.loop, args=(stats, stop, deadline, least or {}), daemon=True,
                name=f"soak-{role}-{index}",
            )  # fmt: skip
            thread.start()
            threads.append(thread)
        started = time.monotonic()
        try:
            while any(t.is_alive() for t in threads):
                if self.proxy is not None and self.proxy.poll() is not None:
                    stats.error("proxy", 0, f"regproxy exited {self.proxy.returncode}")
                    raise Failed("regproxy exited during the soak")
                if time.monotonic() > deadline + COMMAND_TIMEOUT + 30:
                    stats.error("stuck", 0, "workers still busy long after the deadline")
                    raise Failed("workers stuck")
                for thread in threads:
                    thread.join(0.2)
        finally:
            stop.set()
            stats.elapsed = time.monotonic() - started
        return stats


def roles_for(workers: int) -> list[str]:
    roles = [ROLE_CYCLE[i % len(ROLE_CYCLE)] for i in range(workers)]
    if "pusher" not in roles:
        roles[0] = "pusher"
    return roles


def log_findings(text: str) -> dict[str, Any]:
    """Warnings, errors and tracebacks in regproxy's diagnostics (stderr)."""
    levels = Counter(
        m.group(1) for m in re.finditer(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ", text, re.M)
    )
    interesting = [
        line
        for line in text.splitlines()
        if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)
        and "authentication failed" not in line
    ]
    return {
        "warnings": levels["WARNING"],
        "errors": levels["ERROR"] + levels["CRITICAL"],
        "tracebacks": text.count("Traceback (most recent call last)"),
        "first_lines": interesting[:10],
    }


def run(options: Options) -> dict[str, Any]:
    """The whole soak; returns the report (also written to options.json_path)."""
    wall = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="regproxy-soak-"))
    soak = Soak(options, workdir)
    roles = roles_for(options.workers)
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {
            "minutes": options.minutes,
            "workers": options.workers,
            "roles": dict(Counter(roles)),
            "seed": options.seed,
            "warmup_s": options.warmup,
            "proxy_workers": options.proxy_workers,
            "keepalive_s": options.keepalive,
        },
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    phases: list[Stats] = []
    problems: list[str] = []
    interrupted = False
    try:
        soak.start()
        soak.start_sampling()
        log(f"warm-up: {options.warmup:.0f}s with {len(roles)} workers {dict(Counter(roles))}")
        soak.run_phase("warmup", options.warmup, roles, phases)
        before = soak.metrics()
        start = soak.settle()
        log(f"start: RSS {start.rss_kib / 1024:.1f} MiB, {start.fds} fds {start.kinds}")
        log(f"soak: {options.minutes:g} min")
        soak.run_phase("soak", options.minutes * 60, roles, phases, options.least)
        after = soak.metrics()
        end = soak.settle()
        log(f"end: RSS {end.rss_kib / 1024:.1f} MiB, {end.fds} fds {end.kinds}")
    except (Failed, RuntimeError) as exc:  # RuntimeError: the registry or proxy did not start
        problems.append(str(exc))
        start = end = soak.samples[-1] if soak.samples else Sample(0, 0, 0, {})
        before = after = {}
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C or SIGTERM: clean up, no report
        raise
    finally:
        soak.close()
        report["proxy_exit_code"] = soak.proxy_rc
        findings = log_findings(soak.proxy_log())
        access = soak.proxy_dir / "access.log"
        audit = soak.proxy_dir / "audit.log"
        requests = len(access.read_bytes().splitlines()) if access.exists() else 0
        audit_lines = len(audit.read_bytes().splitlines()) if audit.exists() else 0
        failed = problems or any(p.failed for p in phases) or findings["tracebacks"]
        if failed and not interrupted:
            save_logs(soak, options.json_path)
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")

    soak_phase = phases[-1] if phases and phases[-1].name == "soak" else Stats("soak")
    soak_samples = [s for s in soak.samples if s.t >= start.t]
    peak = max(soak_samples, key=lambda s: s.rss_kib, default=end)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    statuses: Counter[str] = Counter()
    for key, value in delta.items():
        if key.startswith("regproxy_requests_total{"):
            status = re.search(r'status="(\d+)"', key)
            statuses[status.group(1) if status else "?"] += int(value)
    all_statuses: Counter[str] = Counter()
    for key, value in after.items():
        if key.startswith("regproxy_requests_total{"):
            status = re.search(r'status="(\d+)"', key)
            all_statuses[status.group(1) if status else "?"] += int(value)

    errors = sum(sum(p.failed.values()) for p in phases)
    fd_limit = start.fds + options.fd_slack
    rss_limit = start.rss_kib + int(options.rss_slack_mib * 1024) * start.processes
    if errors:
        problems.append(f"{errors} operations failed")
    if end.fds > fd_limit:
        problems.append(f"open fds grew from {start.fds} to {end.fds} (limit {fd_limit})")
    if end.rss_kib > rss_limit:
        grew = f"{start.rss_kib} KiB to {end.rss_kib} KiB (limit {rss_limit} KiB)"
        problems.append(f"RSS grew from {grew}")
    if end.connections:
        problems.append(f"{end.connections} connections still open at the end")
    server_errors = sum(n for s, n in all_statuses.items() if s.startswith("5"))
    if server_errors:
        problems.append(f"the proxy answered 5xx {server_errors} times")
    if findings["tracebacks"]:
        problems.append(f"{findings['tracebacks']} tracebacks in the proxy's log")
    if soak.proxy_rc not in (0, None):
        problems.append(f"regproxy exited {soak.proxy_rc} on SIGTERM")
    if not soak_phase.ok:
        problems.append("no operation succeeded")

    report.update(
        {
            "wall_seconds": round(time.monotonic() - wall, 1),
            "warmup": (phases[0] if phases else Stats("warmup")).summary(),
            "soak": soak_phase.summary(),
            "errors": errors,
            "error_messages": [m for p in phases for m in p.errors][:10],
            "proxy": {
                "requests_logged": requests,
                "audit_lines": audit_lines,
                "soak_requests_by_status": dict(sorted(statuses.items())),
                "all_requests_by_status": dict(sorted(all_statuses.items())),
                "soak_request_bytes": int(delta.get("regproxy_request_bytes_total", 0)),
                "soak_response_bytes": int(delta.get("regproxy_response_bytes_total", 0)),
                "rss_kib": {"start": start.rss_kib, "peak": peak.rss_kib, "end": end.rss_kib},
                "rss_growth_kib_per_1000_requests": round(
                    (end.rss_kib - start.rss_kib) * 1000 / max(1, sum(statuses.values())), 1
                ),
                "fds": {
                    "start": start.fds,
                    "peak": max((s.fds for s in soak_samples), default=end.fds),
                    "end": end.fds,
                    "start_kinds": start.kinds,
                    "end_kinds": end.kinds,
                },
                "log": findings,
                "samples": [[s.t, s.rss_kib, s.fds, s.connections] for s in soak.samples],
            },
            "limits": {
                "fds_end_max": fd_limit,
                "rss_end_max_kib": rss_limit,
                "fd_slack": options.fd_slack,
                "rss_slack_mib": options.rss_slack_mib,
            },
            "ok": not problems,
            "problems": problems,
        }
    )
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def save_logs(soak: Soak, json_path: Path) -> None:
    """Copy the proxy's and the registry's logs next to the JSON report (the temp dir goes)."""
    target = json_path.with_name(json_path.stem + "-logs")
    target.mkdir(parents=True, exist_ok=True)
    sources = [soak.proxy_dir / n for n in ("regproxy.err", "access.log", "audit.log")]
    if soak.registry is not None:
        sources.append(soak.registry.log)
    for source in sources:
        if source.exists():
            shutil.copy(source, target / source.name)
    log(f"logs saved in {target}")


def render(report: dict[str, Any]) -> str:
    """The short markdown summary printed at the end."""
    soak, proxy = report["soak"], report["proxy"]
    lines = [
        f"## regproxy soak: {report['options']['minutes']:g} min, "
        f"{report['options']['workers']} workers {report['options']['roles']}, "
        f"seed {report['options']['seed']}",
        "",
        "| operation | ok | errors | p50 s | p95 s | max s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in soak.get("operations", {}).items():
        lines.append(
            f"| {kind} | {row['ok']} | {row['errors']} | {row['p50_s']:.2f} | "
            f"{row['p95_s']:.2f} | {row['max_s']:.2f} |"
        )
    total, failed = soak.get("total_ok", 0), soak.get("errors", 0)
    lines.append(f"| **total** | **{total}** | **{failed}** | | | |")
    rss, fds, limits = proxy["rss_kib"], proxy["fds"], report["limits"]
    lines += [
        "",
        "| proxy | start | peak | end | allowed at end |",
        "|---|---:|---:|---:|---:|",
        f"| RSS MiB | {rss['start'] / 1024:.1f} | {rss['peak'] / 1024:.1f} | "
        f"{rss['end'] / 1024:.1f} | {limits['rss_end_max_kib'] / 1024:.1f} |",
        f"| open fds | {fds['start']} | {fds['peak']} | {fds['end']} | {limits['fds_end_max']} |",
        "",
    ]
    moved = soak.get("bytes", {})
    verified = soak.get("verified", {})
    lines += [
        f"- bytes: {moved.get('pushed', 0) / MIB:.0f} MiB of new images pushed, "
        f"{moved.get('pulled', 0) / MIB:.0f} MiB pulled and verified by skopeo, "
        f"{moved.get('raw_get', 0) / MIB:.0f} MiB of blobs read raw; the proxy counted "
        f"{proxy['soak_request_bytes'] / MIB:.0f} MiB in, "
        f"{proxy['soak_response_bytes'] / MIB:.0f} MiB out",
        f"- digests verified: {verified.get('manifests', 0)} manifests, "
        f"{verified.get('blobs', 0)} blobs; {verified.get('catalog_pages', 0)} catalog pages",
        f"- proxy answers during the soak by status: {proxy['soak_requests_by_status']}; "
        f"access log lines (whole run): {proxy['requests_logged']}",
        f"- warm-up: {report['warmup'].get('total_ok', 0)} ok, "
        f"{report['warmup'].get('errors', 0)} errors; wall time {report['wall_seconds']:.0f}s",
        f"- proxy log: {proxy['log']['warnings']} warnings, {proxy['log']['errors']} errors, "
        f"{proxy['log']['tracebacks']} tracebacks; exit code on SIGTERM "
        f"{report['proxy_exit_code']}",
    ]
    for message in report["error_messages"][:5]:
        lines.append(f"- error: `{message.splitlines()[0][:200]}`")
    lines.append(
        "- result: **ok**" if report["ok"] else f"- result: **FAILED**: {report['problems']}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--minutes", type=float, default=2.0, help="soak length (default 2)")
    add("--workers", type=int, default=6, help="concurrent workers (default 6)")
    add("--seed", type=int, default=None, help="random seed (default: random, printed)")
    warmup = "seconds of the same workload before the start sample (default 15)"
    add("--warmup", type=float, default=15.0, help=warmup)
    add("--proxy-workers", type=int, default=1, help="regproxy --workers (default 1)")
    keepalive = "regproxy timeouts.keepalive: idle connections close this soon (default 5)"
    add("--keepalive", type=float, default=5.0, help=keepalive)
    add("--fd-slack", type=int, default=2, help="allowed open-fd growth (default 2)")
    add(
        "--rss-slack-mib",
        type=float,
        default=10.0,
        help="allowed RSS growth per proxy process (default 10)",
    )
    add("--json", type=Path, default=DEFAULT_JSON, help="report (default bench/results/soak.json)")
    add("--keep", action="store_true", help="keep the temp dir")
    least = "go on past --minutes until N operations of KIND succeeded (repeatable)"
    add("--least", action="append", default=[], metavar="KIND=N", type=_least, help=least)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.workers < 1 or args.warmup < 0:
        parser.error("--minutes and --workers must be positive, --warmup not negative")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    return Options(
        minutes=args.minutes,
        workers=args.workers,
        seed=seed,
        warmup=args.warmup,
        proxy_workers=args.proxy_workers,
        keepalive=args.keepalive,
        fd_slack=args.fd_slack,
        rss_slack_mib=args.rss_slack_mib,
        json_path=args.json,
        keep=args.keep,
        least=dict(args.least),
    )


def _least(text: str) -> tuple[str, int]:
    kind, _, count = text.partition("=")
    if not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND=N")
    return kind, int(count)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for tool in ("docker-registry", "skopeo", "htpasswd"):
        if shutil.which(tool) is None:
            print(f"soak: {tool} not found (make soak installs it)", file=sys.stderr)
            return 2
    try:
        report = run(options)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    print(render(report))
    log(f"report written to {options.json_path}")
    return 0 if report["ok"] else 1


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # the same cleanup as Ctrl-C


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
