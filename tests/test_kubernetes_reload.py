"""The Deployment's container on loopback: `regproxy serve` with the Deployment's arguments,
reading the ConfigMap and Secrets from volumes laid out and updated exactly as the kubelet
does it (a `..data` symlink swapped by one rename, the old directory removed). Updates of
users, groups, the config file, the ACL and the TLS pair take effect; the probes answer as
the Deployment expects, a registry outage failing readiness only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web

from devtools.net import free_port
from tests.conftest import (
    GROUPS_TEXT,
    USERS,
    FakeUpstream,
    TlsPair,
    basic,
    htpasswd_text,
    serving,
    until,
)
from tests.kube import Pod, container, find
from tests.redis_server import RedisServer

RELOAD_BOUND = 10.0  # seconds; only stops a broken run from hanging (it takes well under 1)


@dataclass
class Running:
    """The container under test: its volumes, and clients for its two listeners."""

    pod: Pod
    url: str
    metrics_url: str
    session: aiohttp.ClientSession

    @property
    def container(self) -> dict[str, Any]:
        return container(self.pod.deployment)

    async def status(self, user: str | None, password: str = "", push: bool = False) -> int:
        method, path = ("POST", "/v2/a/blobs/uploads/") if push else ("GET", "/v2/")
        headers = {"Authorization": basic(user, password)} if user else {}
        async with self.session.request(method, self.url + path, headers=headers) as resp:
            return resp.status


def with_test_contents(
    pod: Pod, tls: TlsPair, upstream: str, ports: tuple[int, int], redis: RedisServer
) -> None:
    """The shipped ConfigMap with loopback addresses, one worker (each worker reloads on its
    own; one makes every answer come from the process under test), a throttle that the
    logins polled until a new user works do not trip and a short drain delay (no load
    balancer to wait for at the end); test users; the session's TLS pair; a real Redis whose
    password is in the projected Secret."""
    config = yaml.safe_load(pod.files["config"]["regproxy.yaml"])
    config.update(
        listen=f"127.0.0.1:{ports[0]}",
        upstream=upstream,
        workers=1,
        metrics={"listen": f"127.0.0.1:{ports[1]}"},
        throttle={"attempts": 1000},
        timeouts={"drain_delay": 1},
    )
    config["state"]["url"] = redis.url
    pod.files["config"]["regproxy.yaml"] = yaml.safe_dump(config).encode()
    pod.files["auth"] = {
        "htpasswd": htpasswd_text(USERS).encode(),
        "groups": GROUPS_TEXT.encode(),
        "secret": b"0123456789abcdef" * 4,
    }
    pod.files["tls"] = {"tls.crt": tls.cert.read_bytes(), "tls.key": tls.key.read_bytes()}
    assert redis.password is not None
    pod.files["redis"] = {"password": redis.password.encode()}


@pytest.fixture
async def running(tmp_path: Path, tls: TlsPair, upstream: FakeUpstream) -> AsyncIterator[Running]:
    pod = Pod(find("Deployment", "regproxy"), tmp_path / "pod")
    ports = (free_port(), free_port())
    redis = RedisServer(tmp_path / "redis", password="kubernetes-secret")
    with_test_contents(pod, tls, upstream.url, ports, redis)
    pod.write()
    async with (
        running_redis(redis),
        serving(pod.args(), tmp_path),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as session,
    ):
        yield Running(pod, f"https://localhost:{ports[0]}", f"http://127.0.0.1:{ports[1]}", session)


@contextlib.asynccontextmanager
async def running_redis(redis: RedisServer) -> AsyncIterator[None]:
    """Redis for the block, stopped by PID after the proxy, whatever happens."""
    redis.start()
    try:
        yield
    finally:
        redis.stop()


async def took(check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until `check()` holds (polled); fails if it never does."""
    started = time.monotonic()
    await until(check, RELOAD_BOUND)
    return time.monotonic() - started


async def test_kubelet_updates_of_secrets_and_configmap_take_effect(running: Running) -> None:
    pod, seconds = running.pod, {}
    assert await running.status("carol", "c-pw", push=True) == 401
    before = pod.volumes["auth"].generation()
    users = {user: pw for user, pw in USERS.items() if user != "pull"} | {"carol": "c-pw"}
    pod.update("auth", htpasswd=htpasswd_text(users).encode(), groups=b"pusher: push carol\n")
    assert not (pod.volumes["auth"].directory / before).exists()
    assert (pod.volumes["auth"].directory / "htpasswd").readlink() == Path("..data/htpasswd")
    seconds["htpasswd+groups"] = await took(
        lambda: _is(running.status("carol", "c-pw", push=True), 200)
    )
    assert await running.status("pull", USERS["pull"]) == 401  # removed in the same update

    config = pod.files["config"]["regproxy.yaml"] + b"realm: Kubernetes Registry\n"
    pod.update("config", **{"regproxy.yaml": config})
    seconds["regproxy.yaml"] = await took(lambda: _realm_is(running, "Kubernetes Registry"))

    assert await running.status("other", USERS["other"], push=True) == 403
    acl = "acl:\n  - users: [other]\n    actions: ['*']\n  - groups: [pusher]\n    actions: ['*']\n"
    pod.update("config", **{"acl.yaml": acl.encode()})
    seconds["acl.yaml"] = await took(
        lambda: _is(running.status("other", USERS["other"], push=True), 200)
    )

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    pem = {"tls.crt": leaf.cert_chain_pems[0].bytes(), "tls.key": leaf.private_key_pem.bytes()}
    pod.update("tls", **pem)
    seconds["tls pair"] = await took(lambda: _handshake(running, ca))
    print("took effect after (s):", {k: round(v, 2) for k, v in seconds.items()})


async def test_probes_answer_as_the_deployment_expects(
    running: Running, upstream: FakeUpstream
) -> None:
    readiness = running.container["readinessProbe"]["httpGet"]["path"]
    liveness = running.container["livenessProbe"]["httpGet"]["path"]
    assert await _probe(running, readiness) == 200
    async with running.session.get(running.metrics_url + readiness) as resp:
        assert json.loads(await resp.text())["store"] == "ok"  # Redis, with the Secret's password
    assert await _probe(running, liveness) == 200

    async def down(_: web.Request) -> web.Response:
        return web.Response(status=503)

    upstream.handlers["/v2/"] = down
    assert await _probe(running, readiness) == 503
    assert await _probe(running, liveness) == 200


async def _probe(running: Running, path: str) -> int:
    async with running.session.get(running.metrics_url + path) as resp:
        return resp.status


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _realm_is(running: Running, realm: str) -> bool:
    async with running.session.get(running.url + "/v2/") as resp:
        return resp.headers.get("WWW-Authenticate") == f'Basic realm="{realm}"'


async def _handshake(running: Running, ca: trustme.CA) -> bool:
    """Whether a client trusting only `ca` completes a TLS handshake with the proxy now."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    port = int(running.url.rsplit(":", 1)[1])
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
    except ssl.SSLCertVerificationError:
        return False
    writer.close()
    await writer.wait_closed()
    return True
