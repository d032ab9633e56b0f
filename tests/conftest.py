"""Shared fixtures: a recording fake upstream, and regproxy itself in-process on a free port."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
from aiohttp import web
from hypothesis import settings
from prometheus_client.parser import text_string_to_metric_families

from devtools.net import free_port, free_socket
from proxy.authn.credentials import hash_password
from proxy.authn.robotfile import derive
from proxy.conf.reload import State
from proxy.conf.snapshot import load_snapshot
from proxy.guards.uploads import bind_location
from proxy.http.listener import Connections
from proxy.http.routes import Operation, classify
from proxy.serve.server import Server
from proxy.state.peers import Peers
from tests import forked

if TYPE_CHECKING:
    from devtools.oidc_issuer import Issuer

# Property tests: 300 examples in `make test`, Hypothesis's own 100 in `make check` (the inner
# loop, where every property still runs), a long run in `make fuzz`.
settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile("check", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FORKED = forked.Server(ENV)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first: e2e, then in-process, then the many short unit tests, so that the
    files xdist hands out last are short ones that fill the gaps, not a long e2e file that
    runs on alone while the other workers wait. Within a file the order stays."""
    first, last = ROOT / "tests" / "e2e", ROOT / "tests" / "unit"
    items.sort(
        key=lambda item: 1 - item.path.is_relative_to(first) + item.path.is_relative_to(last)
    )


# Test users: (password, groups). Cost 4 keeps hashing fast; the cost is not what is tested.
USERS = {"pull": "pull-pw", "push": "push:pw", "other": "other-pw"}
GROUPS_TEXT = "pusher: push\nreaders: other\n"
# The server's secret that write_setup leaves as `secret` (used with `secret_file: secret`).
SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Recorded:
    method: str
    path_qs: str
    headers: dict[str, list[str]]
    body_sha256: str
    body_length: int


UpstreamHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeUpstream:
    """An aiohttp server that records every request and answers with `handlers[path]`."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    handlers: dict[str, UpstreamHandler] = field(default_factory=dict)
    streaming: set[str] = field(default_factory=set)  # paths whose handler reads the body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        digest, length = hashlib.sha256(), 0
        if request.path not in self.streaming:
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                length += len(chunk)
        headers: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        self.requests.append(
            Recorded(request.method, request.raw_path, headers, digest.hexdigest(), length)
        )
        handler = self.handlers.get(request.path)
        if handler is not None:
            return await handler(request)
        return web.json_response({}, headers={"Docker-Distribution-Api-Version": "registry/2.0"})


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    server = web.Server(fake.handle, auto_decompress=False)
    runner = web.ServerRunner(server)
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock).start()
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield fake
    await runner.cleanup()


@dataclass
class TlsPair:
    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only the test CA (the system's CAs, which cost 25 ms to
        load each time, would trust nothing here)."""
        return ssl.create_default_context(cadata=self.ca.cert_pem.bytes().decode())


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsPair:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        with cert.open("ab") as handle:
            handle.write(extra.bytes())
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    return TlsPair(ca, cert, key)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def htpasswd_text(users: dict[str, str]) -> str:
    return "".join(f"{user}:{hash_password(pw, cost=4)}\n" for user, pw in users.items())


def bound(path: str, user: str | None, key: bytes) -> str:
    """An upload URL path (query included) as the proxy hands it to `user`: with the binding
    that makes it theirs (proxy.guards.uploads)."""
    upload = classify("PATCH", urlsplit(path).path)
    assert isinstance(upload, Operation) and upload.repository is not None
    return bind_location(path, upload.repository, key, user)


def secret_bound(path: str, user: str | None) -> str:
    """`bound` for a server whose config has `secret_file: secret` (write_setup's SECRET)."""
    return bound(path, user, derive(SECRET.encode(), "uploads"))


def replace_file(path: Path, text: str | bytes) -> None:
    """Write-then-rename, as `htpasswd` and most editors do."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    tmp.replace(path)


@dataclass
class RunningProxy:
    server: Server
    state: State
    directory: Path
    url: str
    session: aiohttp.ClientSession

    @property
    def htpasswd(self) -> Path:
        return self.directory / "htpasswd"

    @property
    def groups(self) -> Path:
        return self.directory / "groups"

    @property
    def config(self) -> Path:
        return self.directory / "regproxy.yaml"

    def auth(self, user: str, password: str | None = None) -> dict[str, str]:
        """Headers with the Basic credentials of a test user."""
        return {"Authorization": basic(user, USERS[user] if password is None else password)}

    def upload(self, path: str, user: str | None) -> str:
        """The upload URL path as this proxy would have handed it to `user`."""
        return bound(path, user, self.state.current.key("uploads") or self.server.upload_key)


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def make_proxy(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> AsyncIterator[ProxyFactory]:
    """Start regproxy in-process; `await make_proxy(extra_yaml="...")`."""
    started: list[RunningProxy] = []

    async def start(
        extra_yaml: str = "",
        upstream_url: str | None = None,
        directory: Path | None = None,
        host: str = "127.0.0.1",
        connections: type[Connections] | None = None,
    ) -> RunningProxy:
        """`directory` (default: the test's tmp_path) holds the config and user files; `host`
        is the address the proxy's socket is bound to; `connections` what makes connections
        (default: the server's)."""
        where = directory or tmp_path
        where.mkdir(parents=True, exist_ok=True)
        (where / "htpasswd").write_text(htpasswd_text(USERS))
        (where / "groups").write_text(GROUPS_TEXT)
        config_path = where / "regproxy.yaml"
        config_path.write_text(
            f"upstream: {upstream_url or upstream.url}\n"
            f"htpasswd: htpasswd\ngroups: groups\n"
            f"tls:\n  cert: {tls.cert}\n  key: {tls.key}\n" + extra_yaml
        )
        snapshot, _ = load_snapshot(config_path, {})
        server = Server(snapshot, config_path, {})
        server.factory = connections or server.factory
        sock = free_socket(host)
        await server.startup(sock)
        assert server.state is not None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context()), auto_decompress=False
        )
        url = f"https://localhost:{server.port}"
        running = RunningProxy(server, server.state, where, url, session)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.session.close()
        await running.server.shutdown()


def write_setup(directory: Path, tls: TlsPair, upstream: str, extra: str = "") -> Path:
    """A config for `regproxy serve` in `directory`, with its own copy of the TLS pair."""
    (directory / "server.crt").write_bytes(tls.cert.read_bytes())
    (directory / "server.key").write_bytes(tls.key.read_bytes())
    (directory / "htpasswd").write_text(htpasswd_text(USERS))
    (directory / "groups").write_text(GROUPS_TEXT)
    (directory / "secret").write_text(SECRET + "\n")
    config = directory / "regproxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\nupstream: {upstream}\n"
        "htpasswd: htpasswd\ngroups: groups\ntls:\n  cert: server.crt\n  key: server.key\n"
        + one_worker_unless(extra)
    )
    return config


def one_worker_unless(extra: str) -> str:
    """Subprocess tests run one worker (per-process caches and counters make answers
    deterministic) unless the test asks for more; the default is one per CPU."""
    return extra if "workers:" in extra else "workers: 1\n" + extra


@dataclass
class Served:
    """`regproxy serve` as a subprocess, with a client session that trusts it."""

    process: asyncio.subprocess.Process
    url: str
    session: aiohttp.ClientSession
    stdout: Path
    directory: Path


@contextlib.asynccontextmanager
async def serving(
    args: list[str],
    directory: Path,
    open_files: int | tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`regproxy ARGS` as a subprocess in `directory` (access log to access.log, diagnostics
    to regproxy.err), from its "listening on" line until the block ends. `open_files`: its
    open-files limit (soft and hard, or both alike), as a service manager would set it; `env`:
    variables to add to its environment. Its workers' shared files go in `directory` too
    (TMPDIR): a test that kills worker 0 leaves them behind."""
    stdout, stderr = directory / "access.log", directory / "regproxy.err"

    def limit() -> None:
        if open_files is not None:
            soft, hard = open_files if isinstance(open_files, tuple) else (open_files, open_files)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", *args,
            cwd=directory, env={**ENV, "TMPDIR": str(directory), **(env or {})}, stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=limit,
        )  # fmt: skip
    try:
        for _ in range(400):
            if b"listening on" in stderr.read_bytes():
                break
            assert process.returncode is None, stderr.read_text()
            await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.terminate()  # workers too: the parent relays it
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
        await process.wait()


@pytest.fixture
async def served(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream, request: pytest.FixtureRequest
) -> AsyncIterator[Served]:
    # "{free_port}" in the extra config: a port picked as the test starts, not at collection
    extra = getattr(request, "param", "").replace("{free_port}", str(free_port()))
    config = write_setup(tmp_path, tls, upstream.url, extra)
    port = int(re.search(r"listen: 127.0.0.1:(\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    async with serving(["serve", "-c", str(config)], tmp_path) as process:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context()))
        yield Served(
            process, f"https://localhost:{port}", session, tmp_path / "access.log", tmp_path
        )
        await session.close()


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[Issuer]:
    """A local OIDC issuer on loopback HTTPS (devtools/oidc_issuer.py), stopped afterwards."""
    from devtools.oidc_issuer import Issuer

    running = Issuer(tmp_path / "issuer").start()
    yield running
    running.close()


# -- helpers the test modules share -----------------------------------------------------------


async def until(
    check: Callable[[], object], seconds: float = 10.0, what: str = "the condition never held"
) -> None:
    """Wait for a positive signal: poll `check()` (plain or async) until it holds. The bound
    only stops a broken run from hanging."""
    deadline = time.monotonic() + seconds
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def regproxy(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`regproxy ARGS` as a user runs it (a process of its own, tests/forked.py), its output as
    text; stdin empty unless given."""
    return FORKED.run(list(args), cwd, stdin, timeout=60)


def worker_pids(parent: int) -> list[int]:
    """`regproxy serve`'s workers: the process itself (worker 0) and the ones it started."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [parent, *map(int, children)]


def worker_holding(server_port: int, client_port: int, workers: list[int]) -> int | None:
    """The worker process that holds the server end of the connection from `client_port`."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inode = fields[9]
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
    return None


class KeptConnection:
    """One keep-alive TLS connection to the proxy, for requests that must reuse it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, port: int, tls: TlsPair) -> KeptConnection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(), server_hostname="localhost"
        )
        return cls(reader, writer)

    async def get(self, path: str, authorization: str | None = None, method: str = "GET") -> int:
        extra = f"Authorization: {authorization}\r\n" if authorization else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
        length = re.search(r"(?im)^content-length: *(\d+)", head)
        if method != "HEAD":
            await self.reader.readexactly(int(length.group(1)) if length else 0)
        return int(head.split()[1])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def one_connection_per_worker(served: Served, tls: TlsPair) -> tuple[KeptConnection, ...]:
    """New connections until each of the two workers holds one (the others are closed)."""
    workers = worker_pids(served.process.pid)
    port = int(served.url.rsplit(":", 1)[1])
    held: dict[int, KeptConnection] = {}
    # Whichever worker calls accept() first takes the connection: on a busy machine one may
    # win many times in a row, so the bound is time (a broken run must not hang), not tries.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        connection = await KeptConnection.open(port, tls)
        assert await connection.get("/v2/") == 401  # the connection is accepted and served
        owner = worker_holding(port, connection.port, workers)
        if owner is not None and owner not in held:
            held[owner] = connection
        else:
            await connection.close()
        if len(held) == 2:
            return tuple(held.values())
    raise AssertionError("the kernel never gave the second worker a connection")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition format strictly, as a Prometheus server would."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


class Mesh:
    """The worker mesh as worker 0 makes it, for workers in one test process:
    `peers(i)` is worker i's end."""

    def __init__(self, workers: int) -> None:
        self._pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(workers)]
        for inbox, outbox in self._pairs:
            inbox.setblocking(False)
            outbox.setblocking(False)

    def peers(self, index: int) -> Peers:
        others = tuple(out for i, (_, out) in enumerate(self._pairs) if i != index)
        return Peers(self._pairs[index][0], others)

    def close(self) -> None:
        for inbox, outbox in self._pairs:
            inbox.close()
            outbox.close()
