"""Three replicas sharing state through Redis Sentinel (issue 26): Debian's redis-server and
redis-sentinel (one primary, one replica, three sentinels, tests/redis_sentinel.py, each side
with its own password), three `regproxy serve` (the first with two workers) and a real
docker-registry. Before a failover the replicas share throttle counts, blob invalidations and
Redis users; then the primary is killed, and within the failover plus a stated bound every
replica writes to the new primary, with no restart, no acknowledged event lost, no login
allowed that should have been refused, and /health and regproxy_store_up saying what
happened meanwhile. The failover's timeline is printed (`-s`)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import make_tls
from proxy.state.events import LoginFailed, decode
from proxy.state.redis_layout import SENTINEL_BACKOFF_CAP, Keys
from proxy.state.store import StateSettings
from tests.e2e.conftest import ROOT, USERS
from tests.e2e.fleet import Fleet, until
from tests.e2e.harness import make_oci_layout
from tests.redis_sentinel import SERVICE, Failover, SentinelDeployment

pytestmark = pytest.mark.e2e

ATTEMPTS = 5  # throttle.attempts
PUSHER = f"testuserpush:{USERS['testuserpush']}"
REDIS_USERS = {"rita": "rita-in-redis", "gone": "deleted-before-the-failover"}
# A replica follows the sentinels within one reconnection interval plus one connection once
# they name the new primary (README "Redis Sentinel"); the test sees it up to one round of
# its own polling (three /health and three /metrics requests) later.
STATED_BOUND = SENTINEL_BACKOFF_CAP + StateSettings().connect_timeout
POLLING = 0.5


@dataclass
class Setup:
    fleet: Fleet
    redis: SentinelDeployment
    config: Path  # replica 0's, for `regproxy passwd --store`


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("sentinel")
    tls = make_tls(workdir / "tls")
    secret = workdir / "regproxy.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    (workdir / "redis-password").write_text("redis-side-secret\n")
    (workdir / "sentinel-password").write_text("sentinel-side-secret\n")
    with (
        Registry(workdir / "registry") as registry,
        SentinelDeployment(workdir / "redis", "redis-side-secret", "sentinel-side-secret") as redis,
    ):
        addresses = ", ".join(redis.addresses)
        extra = (
            f"secret_file: {secret}\n"
            "state:\n  backend: redis\n"
            f"  password_file: {workdir / 'redis-password'}\n"
            f"  sentinel:\n    addresses: [{addresses}]\n    service: {SERVICE}\n"
            f"    password_file: {workdir / 'sentinel-password'}\n"
            "auth_backends: [htpasswd, redis]\n"
            f"throttle:\n  attempts: {ATTEMPTS}\n"
            "cache:\n  ttl: 60\n"
        )
        fleet = Fleet(workdir, tls, registry, extra)
        try:
            for index in range(3):
                fleet.start_replica(index, workers=2 if index == 0 else 1)
            config = fleet.replicas[0].directory / "regproxy.yaml"
            for user, password in REDIS_USERS.items():
                assert passwd(config, user, "--stdin", "--cost", "5", input=password) == ""
            yield Setup(fleet, redis, config)
        finally:
            fleet.stop()


def passwd(config: Path, user: str, *args: str, input: str | None = None) -> str:
    """`regproxy passwd --store` with the replicas' config (through the sentinels); its
    standard error (warnings)."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "passwd", "--store", "-c", str(config), user, *args],
        input=None if input is None else input + "\n", capture_output=True, text=True,
        cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    return done.stderr


def status(fleet: Fleet, index: int, user: str, password: str, path: str = "/v2/") -> int:
    return fleet.request("GET", path, user, password, port=fleet.replicas[index].port).status


def test_replicas_share_state_through_the_primary_the_sentinels_name(
    setup: Setup, skopeo: Skopeo, tmp_path: Path
) -> None:
    fleet = setup.fleet
    for index in range(3):  # users kept in Redis, on every replica
        assert status(fleet, index, "rita", REDIS_USERS["rita"]) == 200
    statuses = [status(fleet, n % 3, "reader", "wrong") for n in range(ATTEMPTS + 1)]
    assert statuses == [401] * ATTEMPTS + [429]  # guesses spread over the three
    for index in range(3):
        until(lambda i=index: status(fleet, i, "reader", USERS["reader"]) == 429, "throttled")  # type: ignore[misc]

    layout, digest = make_oci_layout(tmp_path / "layout", 64 * 1024, seed=26)
    dest = f"docker://localhost:{fleet.replicas[1].port}/sentinel/app:1"
    copied = skopeo.copy(f"oci:{layout}:latest", dest, creds=PUSHER,
                         dest_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    manifest = json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_text())
    path = f"/v2/sentinel/app/blobs/{manifest['layers'][0]['digest']}"
    user, password = PUSHER.split(":", 1)
    for index in range(3):  # each answers from its cache (it says how old)
        until(lambda i=index: cached(fleet, i, path, user, password), f"replica {index} cached")  # type: ignore[misc]
    assert fleet.request("DELETE", path, user, password, port=fleet.replicas[0].port).status == 202
    for index in range(3):
        until(
            lambda i=index: fleet.request("HEAD", path, user, password,  # type: ignore[misc]
                                          port=fleet.replicas[i].port).status == 404,
            f"the DELETE honoured by replica {index}",
        )  # fmt: skip


def cached(fleet: Fleet, index: int, path: str, user: str, password: str) -> bool:
    response = fleet.request("HEAD", path, user, password, port=fleet.replicas[index].port)
    assert response.status == 200
    return response.getheader("Age") is not None


@dataclass
class Watch:
    """What the replicas said from before the kill until told to stop, at each change
    (when, value): /health and regproxy_store_up in one thread, the answers to the Redis
    users' logins in another. `t0`: when the primary was killed."""

    fleet: Fleet
    t0: float = float("inf")
    changes: dict[str, list[tuple[float, object]]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._health), threading.Thread(target=self._login)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()

    def _note(self, key: str, value: object) -> None:
        seen = self.changes.setdefault(key, [])
        if not seen or seen[-1][1] != value:
            seen.append((time.monotonic(), value))

    def _health(self) -> None:
        while not self.done.is_set():
            for index in range(3):
                code, body = self.fleet.health(index)
                self._note(f"replica {index} /health", (code, body.get("store")))
                up = self.fleet.metric(index, "regproxy_store_up")
                self._note(f"replica {index} regproxy_store_up", up)

    def _login(self) -> None:
        while not self.done.is_set():
            for index in range(3):
                for user, password in REDIS_USERS.items():
                    self._note(f"replica {index} {user}", status(self.fleet, index, user, password))

    def back(self, index: int) -> bool:
        """Whether the replica's regproxy_store_up (the lowest of its workers) went to 0 and
        then back to 1: every worker follows the new primary."""
        values = [value for _, value in self.changes.get(f"replica {index} regproxy_store_up", [])]
        return 0.0 in values and values[-1] == 1.0 and values.index(0.0) < len(values) - 1

    def seen(self, key: str) -> set[object]:
        return {value for _, value in self.changes[key]}

    def first(self, key: str, value: object, after: float = 0.0) -> float:
        """When `key` first took `value`, `after` seconds after the kill or later (seconds
        after the kill)."""
        start = self.t0 + after
        return next(t - self.t0 for t, v in self.changes[key] if v == value and t >= start)


def test_the_primary_killed_the_replicas_follow_the_sentinels(setup: Setup) -> None:
    fleet, redis = setup.fleet, setup.redis
    pids = [replica.process.pid for replica in fleet.replicas]
    # Acknowledged: each 401 is sent once the failure is written and a replica has it.
    assert [status(fleet, n % 3, "testuser", "wrong") for n in range(ATTEMPTS - 1)] == [401] * 4
    assert status(fleet, 2, "gone", REDIS_USERS["gone"]) == 200  # its record cached
    assert passwd(setup.config, "gone", "--delete") == ""  # no warning: a replica has it
    for index in range(3):  # read again from users:version (a poll away), not waited for here
        until(lambda i=index: status(fleet, i, "gone", REDIS_USERS["gone"]) == 401, "gone")  # type: ignore[misc]

    watch = Watch(fleet)
    watch.start()
    until(lambda: len(watch.changes) == 3 * (2 + len(REDIS_USERS)), "a first look at each")
    try:
        failover: list[Failover] = []
        killer = threading.Thread(target=lambda: failover.append(redis.kill_primary()))
        killer.start()  # at once: nothing waited for replication
        for index in range(3):
            until(lambda i=index: fleet.health(i)[1].get("store") == "degraded", "degraded")  # type: ignore[misc]
        during = status(fleet, 1, "testuser", "wrong")  # the fifth, while the store is away
        killer.join()
        (done,) = failover
        watch.t0 = done.killed_at
        for index in range(3):
            until(lambda i=index: watch.back(i), f"every worker of replica {index} back")  # type: ignore[misc]
            until(lambda i=index: status(fleet, i, "rita", REDIS_USERS["rita"]) == 200, "rita")  # type: ignore[misc]
    finally:
        watch.stop()
    assert during == 401
    print_timeline(watch, done)

    switched = done.switched_at - watch.t0
    for index in range(3):
        health, store_up = f"replica {index} /health", f"replica {index} regproxy_store_up"
        degraded = watch.first(health, (200, "degraded"))
        assert watch.first(health, (200, "ok"), after=degraded) > degraded
        recovered = watch.first(store_up, 1.0, after=watch.first(store_up, 0.0))
        assert recovered <= switched + STATED_BOUND + POLLING, (index, recovered, switched)

    # No login allowed that should have been refused: the deleted user never again; a user
    # kept in Redis refused (503) while its record could not be known current.
    for index in range(3):
        assert watch.seen(f"replica {index} gone") <= {401, 429, 503}
        assert watch.seen(f"replica {index} rita") == {200, 503}
        assert status(fleet, index, "gone", REDIS_USERS["gone"]) in (401, 429)

    # Nothing acknowledged lost: the new primary has the four failures from before and the
    # one made while it was away; every replica counts all five.
    client = done.new_primary.client()
    failures = [decode(fields[b"e"]) for _, fields in client.xrange(Keys().events)]
    assert failures.count(LoginFailed("testuser", "127.0.0.1")) == ATTEMPTS
    for index in range(3):
        until(lambda i=index: status(fleet, i, "testuser", "wrong") == 429, "five counted")  # type: ignore[misc]

    # Every replica writes to the new primary, with no restart.
    for index in range(3):
        assert status(fleet, index, f"after{index}", "wrong") == 401
        written = LoginFailed(f"after{index}", "127.0.0.1")
        assert written in [decode(fields[b"e"]) for _, fields in client.xrange(Keys().events)]
    assert [replica.process.pid for replica in fleet.replicas] == pids
    for replica in fleet.replicas:
        log = replica.log()
        assert "exited with" not in log and "Traceback" not in log
        assert f"reachable again (primary 127.0.0.1:{done.new_primary.port})" in log


def print_timeline(watch: Watch, done: Failover) -> None:
    """The failover as it happened, for the closing note."""
    print("\nfailover timeline (seconds after the primary was killed):")
    for port, at in sorted(done.named_at.items(), key=lambda item: item[1]):
        print(f"  {at - watch.t0:6.2f}  sentinel :{port} names the new primary")
    for key, seen in sorted(watch.changes.items()):
        print(f"  {key}: " + ", ".join(f"{t - watch.t0:.2f}s {v}" for t, v in seen))
