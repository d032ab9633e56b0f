"""A rolling upgrade (issue 26): three replicas sharing a real redis-server behind Debian's
HAProxy running the shipped deploy/haproxy/haproxy.cfg, restarted one at a time (SIGTERM,
then a new process on the same port) while workflows run through HAProxy without pause:
docker-style push-then-pull storms (bench/storm.py, every blob's digest checked), podman
pushes and pulls, skopeo copies there and back, and the OCI conformance suite. No workflow
fails, no pushed manifest is missing afterwards, no answer is a 5xx, and each stopping
replica was out of HAProxy's rotation before it stopped accepting connections."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import storm
from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import make_tls
from scripts.conformance import Target, find_binary, run_suite
from tests.e2e.conftest import ROOT, USERS
from tests.e2e.fleet import Fleet, until
from tests.e2e.harness import Podman, make_oci_layout
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

PUSHER = ("testuserpush", USERS["testuserpush"])
PULLER = f"testuser:{USERS['testuser']}"
STORM_CLIENTS = 4
WORKERS = (2, 1, 1)  # replica 0 has 2 workers: worker 0 relays SIGTERM
RESTART_BOUND = 60.0  # seconds a replica may take to drain, restart and rejoin; only a guard


@dataclass
class Workflows:
    """Every workflow of one kind: when each ran, and why each failed."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    pushed: list[tuple[str, str, str]] = field(default_factory=list)  # repository, tag, digest
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, workflow: Callable[[], tuple[str, str, str] | None]) -> None:
        """Run one workflow; a failure is any exception or assertion, kept with its message."""
        started = time.monotonic()
        try:
            pushed = workflow()
        except Exception as exc:
            with self.lock:
                self.failures.append(f"{type(exc).__name__}: {exc}"[:2000])
            return
        with self.lock:
            self.spans.append((started, time.monotonic()))
            if pushed is not None:
                self.pushed.append(pushed)

    @property
    def started(self) -> int:
        return len(self.spans) + len(self.failures)


@dataclass
class Restart:
    """One replica's restart: when it was told to stop, when HAProxy took it out, when its
    port stopped accepting, its exit status, when HAProxy had it back."""

    index: int
    signalled: float
    down: float | None = None
    refused: float | None = None
    status: int | None = None
    back: float | None = None
    logs: str = ""  # what the stopped process wrote (its files are the restarted one's)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    tls = make_tls(tmp_path / "tls")
    secret = tmp_path / "regproxy.secret"  # a push's requests may land on any replica
    secret.write_text(secrets.token_hex(32) + "\n")
    with Registry(tmp_path / "registry") as registry, RedisServer(tmp_path / "redis") as redis:
        extra = f"secret_file: {secret}\nstate:\n  backend: redis\n  url: {redis.url}\n"
        running = Fleet(tmp_path, tls, registry, extra)
        try:
            for index, workers in enumerate(WORKERS):
                running.start_replica(index, workers)
            running.start_haproxy()
            assert running.haproxy is not None
            until(lambda: set(running.haproxy.states().values()) == {"UP"}, "all UP")  # type: ignore[union-attr]
            yield running
        finally:
            running.stop()


def storm_workflows(fleet: Fleet, stop: threading.Event, done: Workflows) -> None:
    """STORM_CLIENTS docker-style clients, each keeping its connections alive across its
    workflows (as a CI runner's daemon does): push a new image, pull it back, every digest
    checked."""
    # The storm takes what CPU the machine has spare: its thread runs at a lower priority
    # (niceness 10), so that in `make test` it does not take CPU from the other tests' files
    # (it took ~80 s of CPU alone). Alone on a machine, it runs as fast as ever.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    context = ssl.create_default_context(cafile=str(fleet.tls.ca_cert))
    block = storm.random_block(256 * 1024)

    async def client(index: int) -> None:
        user = storm.Client(f"https://{fleet.host}", PUSHER, context, storm.Tally())
        n = 0
        try:
            while not stop.is_set():
                image = storm.make_image([64 * 1024, 256 * 1024], block)
                repository, tag = f"rolling/storm{index}", f"n{n}"
                n += 1
                started, failure = time.monotonic(), None
                try:
                    await user.push(repository, tag, image)
                    await user.pull(repository, tag, verify=True)
                except* Exception as group:
                    failure = f"{repository}:{tag}: {first(group)}"
                with done.lock:
                    if failure is not None:
                        done.failures.append(failure)
                    else:
                        done.spans.append((started, time.monotonic()))
                        done.pushed.append((repository, tag, image.digest))
        finally:
            await user.close()

    async def clients() -> None:
        await asyncio.gather(*(client(index) for index in range(STORM_CLIENTS)))

    asyncio.run(clients())


def first(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def podman_workflow(fleet: Fleet, podman: Podman, puller: Podman, n: int) -> tuple[str, str, str]:
    local, tag = f"localhost/rolling:{n}", f"podman{n}"
    podman.build_small_image(local, f"rolling upgrade {n}\n".encode())
    digestfile = podman.workdir / f"digest{n}"
    ref = f"{fleet.host}/rolling/podman:{tag}"
    user, password = PUSHER
    pushed = podman.push(local, ref, fleet.tls.cert_dir, creds=f"{user}:{password}",
                         digestfile=digestfile)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    pulled = puller.pull(ref, fleet.tls.cert_dir, creds=PULLER)
    assert pulled.returncode == 0, pulled.stderr
    digest = digestfile.read_text().strip()
    assert puller.image_digest(ref) == digest
    return "rolling/podman", tag, digest


def skopeo_workflow(fleet: Fleet, workdir: Path, n: int) -> tuple[str, str, str]:
    layout, digest = make_oci_layout(workdir / f"layout{n}", 512 * 1024, seed=n)
    dest = f"docker://{fleet.host}/rolling/skopeo:{n}"
    user, password = PUSHER
    copier = Skopeo(workdir / f"skopeo{n}")  # its own blob cache: real uploads every time
    there = copier.copy(f"oci:{layout}:latest", dest, creds=f"{user}:{password}",
                        dest_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert there.returncode == 0, there.stderr
    back = copier.copy(dest, f"oci:{workdir / f'back{n}'}:1", src_creds=PULLER,
                       src_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert blobs(workdir / f"back{n}") == blobs(layout)
    return "rolling/skopeo", str(n), digest


def blobs(layout: Path) -> dict[str, bytes]:
    return {blob.name: blob.read_bytes() for blob in (layout / "blobs/sha256").iterdir()}


def conformance_results(fleet: Fleet, workdir: Path, n: int) -> dict[str, str]:
    """The OCI conformance suite through HAProxy, in repositories of its own."""
    binary = find_binary(os.environ, ROOT)
    assert not isinstance(binary, str), binary
    user, password = PUSHER
    target = Target(f"https://{fleet.host}", user, password,
                    f"rolling/conformance{n}/repo", f"rolling/conformance{n}/other")  # fmt: skip
    return run_suite(binary, target, fleet.tls.ca_cert, workdir / f"conformance{n}")


def conformance_workflow(fleet: Fleet, workdir: Path, n: int, expected: dict[str, str]) -> None:
    """The suite again: every test has the outcome it had before any restart."""
    results = conformance_results(fleet, workdir, n)
    changed = {t: (expected.get(t), o) for t, o in results.items() if expected.get(t) != o}
    assert not changed, f"outcomes changed during the restarts: {changed}"


def loop(
    stop: threading.Event, done: Workflows, workflow: Callable[[int], tuple[str, str, str] | None]
) -> None:
    n = 0
    while not stop.is_set():
        done.run(lambda n=n: workflow(n))  # type: ignore[misc]
        n += 1


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def watch_restart(fleet: Fleet, restart: Restart, stop: threading.Event) -> None:
    """Note when HAProxy marks the replica down and when its port stops accepting."""
    assert fleet.haproxy is not None
    name = f"regproxy-{restart.index + 1}"
    port = fleet.replicas[restart.index].port
    while not stop.is_set() and (restart.down is None or restart.refused is None):
        if restart.down is None and fleet.haproxy.states()[name] != "UP":
            restart.down = time.monotonic()
        if restart.refused is None and not accepting(port):
            restart.refused = time.monotonic()
        time.sleep(0.05)


def restart(fleet: Fleet, index: int) -> Restart:
    """SIGTERM to one replica (its workers too), wait for it to exit, start it again on its
    port, and wait until HAProxy sends it traffic again."""
    assert fleet.haproxy is not None
    replica = fleet.replicas[index]
    record = Restart(index, time.monotonic())
    stop = threading.Event()
    watcher = threading.Thread(target=watch_restart, args=(fleet, record, stop))
    replica.process.send_signal(signal.SIGTERM)
    watcher.start()
    try:
        record.status = replica.process.wait(RESTART_BOUND)
    finally:
        stop.set()
        watcher.join()
    record.logs = replica.log() + replica.access_log()
    fleet.start_replica(index, WORKERS[index], port=replica.port)
    name = f"regproxy-{index + 1}"
    until(lambda: fleet.haproxy.states()[name] == "UP", f"{name} back", RESTART_BOUND)  # type: ignore[union-attr]
    until(lambda: "/v2/rolling/" in fleet.replicas[index].access_log(), "serving", RESTART_BOUND)
    record.back = time.monotonic()
    return record


def test_replicas_restarted_one_at_a_time_fail_no_workflow(
    fleet: Fleet, podman: Podman, podman2: Podman, tmp_path: Path
) -> None:
    kinds = {kind: Workflows() for kind in ("storm", "podman", "skopeo", "conformance")}
    baseline = conformance_results(fleet, tmp_path, 0)  # before anything restarts
    stop = threading.Event()
    loops = [
        threading.Thread(target=storm_workflows, args=(fleet, stop, kinds["storm"])),
        threading.Thread(target=loop, args=(stop, kinds["podman"],
                         lambda n: podman_workflow(fleet, podman, podman2, n))),
        threading.Thread(target=loop, args=(stop, kinds["skopeo"],
                         lambda n: skopeo_workflow(fleet, tmp_path / "skopeo", n))),
        threading.Thread(target=loop, args=(stop, kinds["conformance"],
                         lambda n: conformance_workflow(fleet, tmp_path, n + 1, baseline))),
    ]  # fmt: skip
    for thread in loops:
        thread.start()
    restarts: list[Restart] = []
    try:
        until(lambda: all(kind.spans for kind in kinds.values()), "every kind under way", 120)
        for index in range(len(fleet.replicas)):
            restarts.append(restart(fleet, index))
        begun = time.monotonic()
        until(lambda: all(any(s > begun for s, _ in k.spans) for k in kinds.values()), "on", 120)
    finally:
        stop.set()
        for thread in loops:
            thread.join(300)

    print("\nrolling restart, workflows started / failed:")
    for name, kind in kinds.items():
        print(f"  {name}: {kind.started} / {len(kind.failures)}")
    t0 = restarts[0].signalled
    for r in restarts:
        print(f"  replica {r.index}: SIGTERM at {r.signalled - t0:.2f}s, out of HAProxy "
              f"{_after(r.down, r)}, refusing {_after(r.refused, r)}, exit {r.status}, "
              f"back at {_after(r.back, r)}")  # fmt: skip
    for name, kind in kinds.items():
        assert not kind.failures, f"{name}: {kind.failures}"
    for r in restarts:
        assert r.status == 0, r
        assert r.down is not None and r.refused is not None, r
        assert r.down < r.refused, f"replica {r.index} stopped accepting while still in HAProxy"
        # Traffic went on through each restart: workflows began after the signal and ended
        # before the replica was back.
        spans = [span for kind in kinds.values() for span in kind.spans]
        assert r.back is not None
        assert any(r.signalled < start and end < r.back for start, end in spans), r
    for repository, tag, digest in [p for kind in kinds.values() for p in kind.pushed]:
        assert fleet.registry.manifest_digest(repository, tag) == digest, (repository, tag)
    logs = [r.logs for r in restarts] + [r.log() + r.access_log() for r in fleet.replicas]
    assert not [log for log in logs if "Traceback" in log]
    statuses = re.findall(r'" (\d{3}) ', "".join(logs))
    assert statuses and not [s for s in statuses if s.startswith("5")]


def _after(moment: float | None, record: Restart) -> str:
    return "never" if moment is None else f"+{moment - record.signalled:.2f}s"
