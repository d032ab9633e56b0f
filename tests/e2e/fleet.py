"""Several regproxy replicas on one machine: a real redis-server they share state through,
`regproxy serve` processes on distinct loopback ports, and HAProxy (Debian's, TCP mode, round
robin, health-checked) in front, as a Kubernetes Service or a load balancer would be. Every
process is started here with its own files and stopped by PID."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from devtools.net import free_port, wait_for_port
from devtools.processes import start, stop
from devtools.registry import Registry
from devtools.tls import TlsFiles
from proxy.authn.credentials import basic_header
from tests.e2e.conftest import RegproxyProcess, start_regproxy
from tests.redis_server import RedisServer, debian_binary

START_TIMEOUT = 20.0


def haproxy_config(port: int, backends: list[int]) -> str:
    """TCP passthrough (TLS ends at the replicas), round robin; a replica whose port stops
    answering is out within a check, and a connection it refuses goes to another."""
    servers = "".join(
        f"    server r{n} 127.0.0.1:{backend}\n" for n, backend in enumerate(backends)
    )
    return (
        "global\n    maxconn 1024\n"
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n"
        "    timeout server 120s\n    retries 3\n    option redispatch\n"
        f"frontend replicas\n    bind 127.0.0.1:{port}\n    default_backend replicas\n"
        "backend replicas\n    balance roundrobin\n"
        "    default-server check inter 300ms fall 1 rise 2\n" + servers
    )


class HAProxy:
    """`haproxy -db` in front of `backends`, on a free port."""

    def __init__(self, directory: Path, backends: list[int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = directory / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, backends))
        self.log = directory / "haproxy.log"
        argv = [debian_binary("haproxy"), "-db", "-f", str(config)]
        self.process = start(argv, self.log)
        try:
            wait_for_port(self.port, self.process, START_TIMEOUT)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"haproxy: {exc}: {self.log.read_text(errors='replace')}") from None

    def stop(self) -> None:
        stop(self.process, 10)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@dataclass
class Fleet:
    """The registry, Redis, the replicas (index -> process) and HAProxy."""

    workdir: Path
    tls: TlsFiles
    registry: Registry
    redis: RedisServer
    extra: str  # each replica's config after its own metrics listener
    replicas: list[RegproxyProcess] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)
    haproxy: HAProxy | None = None

    @property
    def host(self) -> str:
        """What clients call the fleet: the load balancer."""
        assert self.haproxy is not None
        return f"localhost:{self.haproxy.port}"

    def start_replica(self, index: int, workers: int = 1, port: int | None = None) -> None:
        if index == len(self.metrics_ports):
            self.metrics_ports.append(free_port())
        extra = f"workers: {workers}\nmetrics:\n  listen: 127.0.0.1:{self.metrics_ports[index]}\n"
        replica = start_regproxy(
            self.workdir / f"replica{index}", self.registry.url, self.tls, extra + self.extra, port
        )
        if index == len(self.replicas):
            self.replicas.append(replica)
        else:
            self.replicas[index] = replica

    def kill(self, index: int) -> None:
        """SIGKILL to the replica and its workers (each in a process group of its own), as
        when a pod or a machine dies: no drain, nothing written."""
        process = self.replicas[index].process
        for pid in [process.pid, *children(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)

    def admin(self, index: int, path: str) -> tuple[int, bytes]:
        """GET `path` from a replica's metrics listener."""
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_ports[index], timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def health(self, index: int) -> tuple[int, dict[str, str]]:
        status, body = self.admin(index, "/health")
        return status, json.loads(body)

    def metric(self, index: int, name: str) -> float:
        """An unlabelled metric's value on a replica (its workers summed)."""
        for line in self.admin(index, "/metrics")[1].decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def request(
        self, method: str, path: str, user: str, password: str, port: int | None = None
    ) -> http.client.HTTPResponse:
        """One request on a new connection, to the load balancer or to one replica's port;
        the body is read."""
        assert self.haproxy is not None
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        connection = http.client.HTTPSConnection(
            "localhost", port or self.haproxy.port, context=context, timeout=60
        )
        try:
            connection.request(
                method, path, headers={"Authorization": basic_header(user, password)}
            )
            response = connection.getresponse()
            response.read()
            return response
        finally:
            connection.close()

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for replica in self.replicas:
            replica.stop()
