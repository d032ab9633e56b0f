"""Three replicas behind a load balancer on one machine (issue 15): a real redis-server, three
`regproxy serve` on distinct ports (the first with two workers: the mesh and Redis together),
Debian's HAProxy in TCP mode, round robin, in front; a real docker-registry behind. podman and
skopeo push and pull through HAProxy; guesses spread over the replicas are throttled after
the configured total; a blob DELETE through one replica is honoured by the others' caches;
Redis restarted mid-test loses no decision; a replica killed during a push costs the client a
retry, never a digest. One setup for the module; tests run in order and share it."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import make_tls
from proxy.state.events import LoginFailed, decode
from proxy.state.redis_layout import Keys
from tests.e2e.conftest import ROOT, USERS
from tests.e2e.fleet import Fleet, until
from tests.e2e.harness import Podman, make_oci_layout
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ATTEMPTS = 5  # throttle.attempts on every replica
PUSHER = f"testuserpush:{USERS['testuserpush']}"
PULLER = f"testuser:{USERS['testuser']}"
REDIS_USER, REDIS_PASSWORD = "rita", "rita-in-redis"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    tls = make_tls(workdir / "tls")
    secret = workdir / "regproxy.secret"  # replicas accept each other's uploads with it
    secret.write_text(secrets.token_hex(32) + "\n")
    with Registry(workdir / "registry") as registry:
        extra = (
            f"secret_file: {secret}\n"
            f"state:\n  backend: redis\n  url: {redis.url}\n"
            f"auth_backends: [htpasswd, redis]\n"
            f"throttle:\n  attempts: {ATTEMPTS}\n"
            "cache:\n  ttl: 60\n"  # a HEAD answer outlives every wait below
        )
        running = Fleet(workdir, tls, registry, extra)
        try:
            for index in range(3):
                running.start_replica(index, workers=2 if index == 0 else 1)
            running.start_haproxy()
            passwd = [sys.executable, "-m", "proxy", "passwd", "--redis", redis.url]
            subprocess.run(
                [*passwd, REDIS_USER, "--stdin", "--cost", "5"],
                input=REDIS_PASSWORD + "\n", check=True, capture_output=True, text=True,
                cwd=ROOT, timeout=60,
            )  # fmt: skip
            yield running
        finally:
            running.stop()


def test_podman_and_skopeo_push_and_pull_through_the_load_balancer(
    fleet: Fleet, podman: Podman, podman2: Podman, skopeo: Skopeo, tmp_path: Path
) -> None:
    ref = f"{fleet.host}/fleet/podman:1"
    podman.build_small_image("localhost/fleet:1", b"pushed through haproxy\n")
    pushed = podman.push("localhost/fleet:1", ref, fleet.tls.cert_dir, creds=PUSHER,
                         digestfile=tmp_path / "digest")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    digest = (tmp_path / "digest").read_text().strip()
    assert fleet.registry.manifest_digest("fleet/podman", "1") == digest
    pulled = podman2.pull(ref, fleet.tls.cert_dir, creds=PULLER)
    assert pulled.returncode == 0, pulled.stderr
    assert podman2.image_digest(ref) == digest

    layout, layout_digest = make_oci_layout(tmp_path / "layout", 256 * 1024, seed=15)
    copied = skopeo.copy(f"oci:{layout}:latest", f"docker://{fleet.host}/fleet/skopeo:1",
                         creds=PUSHER, dest_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    # A user kept in Redis pulls it back, blob for blob.
    puller = Skopeo(tmp_path / "redis-user")
    back = puller.copy(f"docker://{fleet.host}/fleet/skopeo:1", f"oci:{tmp_path / 'back'}:1",
                       src_creds=f"{REDIS_USER}:{REDIS_PASSWORD}",
                       src_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert blobs(tmp_path / "back") == blobs(layout)
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == layout_digest
    assert all(fleet.served_by("/v2/fleet/")), "round robin reached every replica"


def blobs(layout: Path) -> dict[str, bytes]:
    return {blob.name: blob.read_bytes() for blob in (layout / "blobs/sha256").iterdir()}


def test_guesses_spread_over_replicas_are_throttled_after_the_total(fleet: Fleet) -> None:
    statuses = []
    while len(statuses) < 3 * ATTEMPTS and 429 not in statuses:
        response = fleet.request("GET", "/v2/fleet/guess/manifests/1", "reader", "wrong")
        statuses.append(response.status)
    assert statuses == [401] * ATTEMPTS + [429]  # not 3 x ATTEMPTS
    assert sum(1 for n in fleet.served_by("/v2/fleet/guess/") if n) >= 2
    for replica in fleet.replicas:  # every replica refuses that user there, right or wrong
        response = fleet.request("GET", "/v2/", "reader", USERS["reader"], port=replica.port)
        assert response.status == 429
    assert fleet.request("GET", "/v2/", "testuser", USERS["testuser"]).status == 200


def test_a_blob_delete_through_one_replica_is_honoured_by_the_others(
    fleet: Fleet, skopeo: Skopeo, tmp_path: Path
) -> None:
    layout, _ = make_oci_layout(tmp_path / "layout", 64 * 1024, seed=16)
    copied = skopeo.copy(f"oci:{layout}:latest", f"docker://{fleet.host}/fleet/deleted:1",
                         creds=PUSHER, dest_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    manifest = json.loads(skopeo.inspect_raw(f"docker://{fleet.host}/fleet/deleted:1", PUSHER,
                                             fleet.tls.cert_dir).stdout)  # fmt: skip
    path = f"/v2/fleet/deleted/blobs/{manifest['layers'][0]['digest']}"
    user, password = PUSHER.split(":", 1)
    ports = [replica.port for replica in fleet.replicas]
    for port in ports:  # every replica answers from its cache (it says how old)

        def cached(p: int = port) -> bool:
            response = fleet.request("HEAD", path, user, password, port=p)
            assert response.status == 200
            return response.getheader("Age") is not None

        until(cached, f"the replica on port {port} answering from its cache")
    assert fleet.request("DELETE", path, user, password, port=ports[0]).status == 202
    for port in ports:
        took = until(
            lambda p=port: head(fleet, path, user, password, p) == 404,  # type: ignore[misc]
            f"the DELETE honoured by the replica on port {port}",
        )
        print(f"replica on port {port}: HEAD answered 404 {took:.3f}s after the DELETE")


def head(fleet: Fleet, path: str, user: str, password: str, port: int) -> int:
    return fleet.request("HEAD", path, user, password, port=port).status


def test_redis_restarted_mid_test_loses_no_decision(
    fleet: Fleet, redis: RedisServer, skopeo: Skopeo
) -> None:
    """Redis away: every replica says degraded and goes on with its own state (htpasswd users
    pull, Redis users get 503, guesses are counted where they land); back: they reconnect,
    the guesses made meanwhile reach every replica, and the total counts again."""
    redis.stop()
    for index in range(len(fleet.replicas)):
        until(
            lambda i=index: fleet.health(i) == (200, degraded(fleet)), f"replica {index} degraded"
        )  # type: ignore[misc]
    inspected = skopeo.inspect_raw(f"docker://{fleet.host}/fleet/podman:1", PULLER,
                                   fleet.tls.cert_dir)  # fmt: skip
    assert inspected.returncode == 0, inspected.stderr
    for replica in fleet.replicas:  # known away: users kept in Redis are not let in
        response = fleet.request("GET", "/v2/", REDIS_USER, REDIS_PASSWORD, port=replica.port)
        assert response.status == 503
    away = [fleet.request("GET", "/v2/", "testuser", "wrong").status for _ in range(ATTEMPTS - 1)]
    assert away == [401] * (ATTEMPTS - 1)
    redis.start()
    for index in range(len(fleet.replicas)):  # every worker: /health is one worker's answer
        until(
            lambda i=index: fleet.metric(i, "regproxy_store_up") == 1,  # type: ignore[misc]
            f"replica {index} back",
        )
    client, keys = redis.client(), Keys()

    def guesses_in_redis() -> int:
        entries = client.xrange(keys.events)
        guess = LoginFailed("testuser", "127.0.0.1")
        return sum(1 for _, fields in entries if decode(fields[b"e"]) == guess)

    until(lambda: guesses_in_redis() == ATTEMPTS - 1, "the guesses made while away written")
    last = [fleet.request("GET", "/v2/", "testuser", "wrong").status for _ in range(2)]
    assert last == [401, 429]
    until(
        lambda: fleet.request("GET", "/v2/", REDIS_USER, REDIS_PASSWORD).status == 200,
        "Redis users back",
    )


def degraded(fleet: Fleet) -> dict[str, str]:
    return {"status": "degraded", "upstream": fleet.registry.url, "store": "degraded"}


def test_a_replica_killed_during_a_push_costs_a_retry_not_a_digest(
    fleet: Fleet, skopeo: Skopeo, tmp_path: Path
) -> None:
    """The replica forwarding the layer's upload is killed mid-transfer (each request of a
    push may go to another replica: an upload's state is the registry's)."""
    layout, digest = make_oci_layout(tmp_path / "layout", 64 * 1024 * 1024, seed=17)
    dest = f"docker://{fleet.host}/fleet/killed:1"
    argv = [*skopeo.base, "copy", "--retry-times", "3", "--dest-creds", PUSHER,
            "--dest-cert-dir", str(fleet.tls.cert_dir), f"oci:{layout}:latest", dest]  # fmt: skip
    push = subprocess.Popen(argv, env=skopeo.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = "POST /v2/fleet/killed/blobs/uploads/"
        until(lambda: any(fleet.served_by(started)) or push.poll() is not None, "upload started")
        victim: list[int] = []
        until(lambda: transferring(fleet, victim) or push.poll() is not None, "a transfer")
        assert victim, "the push ended before anything could be killed"
        fleet.kill(victim[0])
        _, err = push.communicate(timeout=300)
    finally:
        if push.poll() is None:
            push.kill()
    said = err.decode(errors="replace")
    if push.returncode != 0:
        # skopeo's own --retry-times does not retry a request cut mid-body ("use of closed
        # network connection"): the client, a person or a CI job, runs it again.
        assert "writing blob" in said, said
        again = skopeo.copy(f"oci:{layout}:latest", dest, creds=PUSHER,
                            dest_cert_dir=fleet.tls.cert_dir)  # fmt: skip
        assert again.returncode == 0, again.stderr
    else:
        assert "retrying" in said, said  # it saw its request cut, and tried again itself
    print(f"killed replica {victim[0]} mid-transfer; the first push said: {said.strip()!r}")
    assert fleet.registry.manifest_digest("fleet/killed", "1") == digest
    puller = Skopeo(tmp_path / "puller")
    pulled = puller.copy(dest, f"oci:{tmp_path / 'pulled'}:1", src_creds=PULLER,
                         src_cert_dir=fleet.tls.cert_dir)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert blobs(tmp_path / "pulled") == blobs(layout)  # skopeo checked every digest too
    fleet.start_replica(victim[0], port=fleet.replicas[victim[0]].port)  # back in the pool
    until(lambda: fleet.ready(victim[0]), "the restarted replica ready")


def transferring(fleet: Fleet, found: list[int]) -> bool:
    """Whether a replica is forwarding a request now (its regproxy_inflight_transfers);
    appends its index to `found`."""
    for index in range(len(fleet.replicas)):
        if fleet.metric(index, "regproxy_inflight_transfers") > 0:
            found.append(index)
            return True
    return False
