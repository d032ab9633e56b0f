"""Rate limits with real clients and real replicas: podman and skopeo push and pull under
the `RateLimit-*` headers, and refused, wait for `Retry-After` and go on; once a budget is
spent, the docker CLI (a private dockerd) shows the 429's reason; a concurrent burst spread
over three replicas sharing one redis-server, and over two workers of one replica (the
worker mesh), allows the budget plus at most the README's bound (the numbers are printed:
`pytest -s`)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles, make_tls
from proxy.authn.credentials import basic_header
from proxy.state.counts import SYNC_INTERVAL
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Docker, Podman, make_oci_layout, make_rootfs_tar
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

PUSHER = f"testuserpush:{USERS['testuserpush']}"
DOCKER_NAME = "regproxy-ratelimit.test"  # ::1 in dockerd's private /etc/hosts
SPENT_LIMIT = 3  # testuser's manifest pulls: spent within the tests
SHORT_LIMIT, SHORT_WINDOW = 2, 10  # reader's: podman and skopeo wait for the window's end
BURST_LIMIT = 100  # the budget of the bursts
OCI = "application/vnd.oci.image.manifest.v1+json"  # or the registry answers 404
LIMITS = f"""
rate_limits:
  users:
    manifest_pulls: {{limit: {SPENT_LIMIT}, per: 6h}}
  overrides:
    - groups: [pusher]
      manifest_pulls: unlimited
    - users: [reader]
      manifest_pulls: {{limit: {SHORT_LIMIT}, per: {SHORT_WINDOW}s}}
"""
BURST = f"""
rate_limits:
  users:
    manifest_pulls: {{limit: {BURST_LIMIT}, per: 6h}}
  overrides:
    - groups: [pusher]
      manifest_pulls: unlimited
"""


@dataclass(frozen=True)
class Site:
    registry: Registry
    proxy: RegproxyProcess
    tls: TlsFiles

    @property
    def host(self) -> str:
        return f"{DOCKER_NAME}:{self.proxy.port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A registry and one regproxy on [::] (dual stack: podman reaches it as localhost,
    dockerd on ::1, as it must: see harness.Docker)."""
    workdir = tmp_path_factory.mktemp("ratelimit")
    tls = make_tls(workdir / "tls", DOCKER_NAME)
    with Registry(workdir / "registry") as registry:
        proxy = start_regproxy(workdir / "proxy", registry.url, tls, LIMITS, host="::")
        try:
            yield Site(registry, proxy, tls)
        finally:
            proxy.stop()


def request(
    tls: TlsFiles, port: int, method: str, path: str, user: str, host: str = "localhost"
) -> http.client.HTTPResponse:
    """One request on a new connection; the body is read."""
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=60)
    try:
        headers = {"Authorization": basic_header(user, USERS[user]), "Accept": OCI}
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def spend(site: Site, path: str, user: str, at_least: float) -> http.client.HTTPResponse:
    """GET `path` until the budget is spent, with at least `at_least` seconds of its window
    left (else again in the next window); the 429."""
    while True:
        response = request(site.tls, site.proxy.port, "GET", path, user)
        if response.status == 429 and int(response.getheader("Retry-After", "0")) >= at_least:
            return response
        if response.status == 429:
            time.sleep(int(response.getheader("Retry-After", "0")))


def test_podman_and_skopeo_keep_working_under_the_headers(
    site: Site, podman: Podman, podman2: Podman, skopeo: Skopeo, tmp_path: Path
) -> None:
    """They read the headers without minding them; refused, they wait `Retry-After` (at most
    a minute, five times: containers/image's own backoff) and go on."""
    ref = f"localhost:{site.proxy.port}/limited/podman:1"
    podman.build_small_image("localhost/limited:1", b"pulled under a budget\n")
    pushed = podman.push("localhost/limited:1", ref, site.tls.cert_dir, creds=PUSHER)
    assert pushed.returncode == 0, pushed.stderr
    reader = f"reader:{USERS['reader']}"
    path = "/v2/limited/podman/manifests/1"
    head = request(site.tls, site.proxy.port, "HEAD", path, "reader")
    assert (head.status, head.getheader("RateLimit-Limit")) == (200, f"{SHORT_LIMIT};w=10")
    refused = spend(site, path, "reader", at_least=3)
    assert refused.getheader("RateLimit-Remaining") == "0;w=10"
    seen = len(site.proxy.access_log().splitlines())
    pulled = podman2.pull(ref, site.tls.cert_dir, creds=reader)
    assert pulled.returncode == 0, pulled.stderr
    answers = [line.rsplit(" ", 2)[1] for line in site.proxy.access_log().splitlines()[seen:]
               if f"GET {path} " in line]  # fmt: skip
    assert answers[0] == "429" and answers[-1] == "200", answers  # refused, waited, pulled
    spend(site, path, "reader", at_least=3)
    copied = skopeo.copy(f"docker://{ref}", f"oci:{tmp_path / 'copy'}:1", src_creds=reader,
                         src_cert_dir=site.tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr


def test_the_docker_cli_shows_the_refusal(
    site: Site, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with contextlib.ExitStack() as stack:
        client = Docker(tmp_path_factory.mktemp("dockerd"), {DOCKER_NAME: "::1"})
        stack.callback(client.cleanup)
        client.trust(site.host, site.tls.ca_cert)
        ref = f"{site.host}/limited/docker:1"
        login = client.login(site.host, "testuserpush", USERS["testuserpush"])
        assert login.returncode == 0, login.stderr
        other = f"{site.host}/limited/docker:2"
        for tag, content in ((ref, b"docker, limited\n"), (other, b"another image\n")):
            client.import_tar(make_rootfs_tar(tmp_path / "rootfs.tar", content), tag)
            assert client.run("push", tag).returncode == 0
            client.run("rmi", tag, check=True)
        login = client.login(site.host, "testuser", USERS["testuser"])
        assert login.returncode == 0, login.stderr
        pulled = client.run("pull", ref)
        assert pulled.returncode == 0, pulled.stderr  # within the budget
        client.run("rmi", ref, check=True)
        path = "/v2/limited/docker/manifests/1"
        statuses = []
        while 429 not in statuses:  # spend what is left
            statuses.append(request(site.tls, site.proxy.port, "GET", path, "testuser").status)
            assert len(statuses) <= SPENT_LIMIT, statuses
        # Not `ref` again: dockerd asks for it with a HEAD (never refused, Docker Hub's way: a
        # pull of what one has costs nothing) and still holds its manifest.
        refused = client.run("pull", other)
        assert refused.returncode != 0
        assert "toomanyrequests: rate limit reached: 3 manifest pulls per 6h" in refused.stderr


# --- bursts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    allowed: int
    refused: int
    seconds: float

    @property
    def rate(self) -> float:
        return (self.allowed + self.refused) / self.seconds


def burst(tls: TlsFiles, ports: list[int], path: str, each: int, concurrency: int) -> Burst:
    """`each` GETs of `path` as testuser sent at once to each port, `concurrency` at a time
    per port (kept-alive connections, as clients do)."""

    async def one_port(port: int) -> list[int]:
        connector = aiohttp.TCPConnector(ssl=tls.client_context(), limit=concurrency)
        headers = {"Authorization": basic_header("testuser", USERS["testuser"]), "Accept": OCI}
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get() -> int:
                async with session.get(f"https://localhost:{port}{path}", headers=headers) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(get() for _ in range(each)))

    async def run() -> list[int]:
        results = await asyncio.gather(*(one_port(port) for port in ports))
        return [status for statuses in results for status in statuses]

    start = time.monotonic()
    statuses = asyncio.run(run())
    seconds = time.monotonic() - start
    assert set(statuses) <= {200, 429}, statuses
    return Burst(statuses.count(200), statuses.count(429), seconds)


def bound(limit: int, sharers: int, result: Burst, stale: float) -> int:
    """The README's bound: the budget, plus what is allowed while the sharers have not heard
    of each other's counts (`stale` seconds at most), and never more than each of the others
    spending the whole budget alone."""
    return limit + min(round(result.rate * stale), (sharers - 1) * limit)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def push_one(skopeo: Skopeo, tls: TlsFiles, port: int, tmp_path: Path, repo: str) -> str:
    layout, _ = make_oci_layout(tmp_path / "layout", 4096, seed=26)
    copied = skopeo.copy(f"oci:{layout}:latest", f"docker://localhost:{port}/{repo}:1",
                         creds=PUSHER, dest_cert_dir=tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    return f"/v2/{repo}/manifests/1"


def test_a_burst_over_three_replicas_overshoots_within_the_bound(
    redis: RedisServer, skopeo: Skopeo, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    extra = f"state:\n  backend: redis\n  url: {redis.url}\n" + BURST
    with Registry(tmp_path / "registry") as registry, contextlib.ExitStack() as stack:
        replicas = []
        for index in range(3):
            replica = start_regproxy(tmp_path / f"replica{index}", registry.url, tls, extra)
            stack.callback(replica.stop)
            replicas.append(replica)
        ports = [replica.port for replica in replicas]
        path = push_one(skopeo, tls, ports[0], tmp_path, "burst/replicas")
        result = burst(tls, ports, path, BURST_LIMIT, concurrency=16)
        round_trip = 0.01  # loopback Redis plus a busy event loop's delay, generously
        most = bound(BURST_LIMIT, 3, result, 2 * (SYNC_INTERVAL + round_trip))
        print(f"\n3 replicas, budget {BURST_LIMIT}: {result.allowed} allowed, "
              f"{result.refused} refused in {result.seconds:.2f}s ({result.rate:.0f} req/s); "
              f"bound {most}")  # fmt: skip
        assert BURST_LIMIT <= result.allowed <= most
        # Settled: every replica now refuses, and the shared total says what was counted.
        for port in ports:
            assert request(tls, port, "GET", path, "testuser").status == 429


def test_a_burst_over_two_workers_of_one_replica_overshoots_within_the_bound(
    skopeo: Skopeo, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    with Registry(tmp_path / "registry") as registry:
        replica = start_regproxy(tmp_path / "replica", registry.url, tls, "workers: 2\n" + BURST)
        try:
            path = push_one(skopeo, tls, replica.port, tmp_path, "burst/workers")
            result = burst(tls, [replica.port] * 2, path, BURST_LIMIT, concurrency=16)
            # The mesh carries each count as it is made: only requests decided in the same
            # moment on both workers go over (a datagram's way, or a worker put off the CPU
            # between reading its inbox and counting: 50 ms here, for a loaded machine).
            most = bound(BURST_LIMIT, 2, result, stale=0.05)
            print(f"\n2 workers, budget {BURST_LIMIT}: {result.allowed} allowed, "
                  f"{result.refused} refused in {result.seconds:.2f}s ({result.rate:.0f} "
                  f"req/s); bound {most}")  # fmt: skip
            assert BURST_LIMIT <= result.allowed <= most
        finally:
            replica.stop()
