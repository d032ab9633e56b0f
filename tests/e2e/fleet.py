"""Several regproxy replicas on one machine: `regproxy serve` processes on distinct loopback
ports sharing state (a real redis-server, or a Sentinel deployment), and HAProxy (Debian's,
with the shipped deploy/haproxy/haproxy.cfg: TCP mode, round robin, /health checks) in front,
as a Kubernetes Service or a load balancer would be. Every process is started here with its
own files and stopped by PID."""

from __future__ import annotations

import contextlib
import csv
import http.client
import json
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devtools.net import free_port, wait_for_port
from devtools.processes import start, stop
from devtools.registry import Registry
from devtools.tls import TlsFiles
from proxy.authn.credentials import basic_header
from tests.e2e.conftest import ROOT, RegproxyProcess, start_regproxy
from tests.redis_server import debian_binary

START_TIMEOUT = 20.0
SHIPPED_HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_config(shipped: str, port: int, backends: list[tuple[int, int]], sock: Path) -> str:
    """The shipped configuration with only its addresses replaced: the frontend's, each
    server's and its check port (`backends`: (port, metrics port) on loopback), the stats
    socket's. Anything else in the file is run as shipped."""
    text, binds = re.subn(r"(?m)^(\s*bind )\S+$", rf"\g<1>127.0.0.1:{port}", shipped)
    text, sockets = re.subn(r"(?m)^(\s*stats socket )\S+", rf"\g<1>{sock}", text)
    servers = re.findall(r"(?m)^\s*server \S+ \S+ port \d+$", text)
    assert (binds, sockets, len(servers)) == (1, 1, len(backends)), "the shipped file changed"
    for line, (backend, health) in zip(servers, backends, strict=True):
        name = line.split()[1]
        text = text.replace(line, f"    server {name} 127.0.0.1:{backend} port {health}", 1)
    return text


class HAProxy:
    """`haproxy -db` with the shipped configuration in front of `backends` ((port, metrics
    port) of each replica), on a free port."""

    def __init__(self, directory: Path, backends: list[tuple[int, int]]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket = directory / "admin.sock"
        config = directory / "haproxy.cfg"
        config.write_text(
            haproxy_config(SHIPPED_HAPROXY.read_text(), self.port, backends, self.socket)
        )
        self.log = directory / "haproxy.log"
        argv = [debian_binary("haproxy"), "-db", "-f", str(config)]
        self.process = start(argv, self.log)
        try:
            wait_for_port(self.port, self.process, START_TIMEOUT)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"haproxy: {exc}: {self.log.read_text(errors='replace')}") from None

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it now (UP, DOWN, ...), from its stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().removeprefix("# ").splitlines())
        return {
            row["svname"]: row["status"].split()[0]
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def stop(self) -> None:
        stop(self.process, 10)


def until(check: Callable[[], bool], what: str, bound: float = 20.0) -> float:
    """Wait for a positive signal; the seconds it took. The bound only stops a broken run
    from hanging."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < bound, f"not reached: {what}"
        time.sleep(0.02)
    return time.monotonic() - start


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
    """The registry, the replicas (index -> process) and HAProxy."""

    workdir: Path
    tls: TlsFiles
    registry: Registry
    extra: str  # each replica's config after its own metrics listener
    replicas: list[RegproxyProcess] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)
    haproxy: HAProxy | None = None

    @property
    def host(self) -> str:
        """What clients call the fleet: the load balancer."""
        assert self.haproxy is not None
        return f"localhost:{self.haproxy.port}"

    def start_haproxy(self) -> None:
        backends = [(r.port, m) for r, m in zip(self.replicas, self.metrics_ports, strict=True)]
        self.haproxy = HAProxy(self.workdir / "haproxy", backends)

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

    def ready(self, index: int) -> bool:
        """Whether the replica's /health says 200 (its metrics listener may not be up yet)."""
        try:
            return self.health(index)[0] == 200
        except OSError:
            return False

    def served_by(self, marker: str) -> list[int]:
        """How many access-log lines with `marker` each replica wrote."""
        return [replica.access_log().count(marker) for replica in self.replicas]

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
        if port is None:
            assert self.haproxy is not None
            port = self.haproxy.port
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=60)
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
        for replica in self.replicas:  # all at once: each spends its drain delay
            if replica.process.poll() is None:
                replica.process.terminate()
        for replica in self.replicas:
            replica.stop()
