"""The command line as users run it: `regproxy check`, `serve` (errors, drain on SIGTERM,
workers, flat memory), `passwd` (files Apache's htpasswd accepts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.conftest import (
    ENV,
    USERS,
    FakeUpstream,
    Served,
    TlsPair,
    basic,
    secret_bound,
    write_setup,
)

MIB = 1024 * 1024


def regproxy(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        env=ENV,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version(tmp_path: Path) -> None:
    result = regproxy("--version", cwd=tmp_path)
    assert result.returncode == 0 and re.fullmatch(r"regproxy \d+\.\d+\.\d+\n", result.stdout)


def test_check_ok(tmp_path: Path, tls: TlsPair) -> None:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000")
    result = regproxy("check", "-c", str(config), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "configuration ok\n", "")


def test_check_lists_every_problem_with_file_and_line(tmp_path: Path, tls: TlsPair) -> None:
    bad = "workers: 0\nbogus: 1\ntimeouts:\n  read: soon\n"
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", bad)
    result = regproxy("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{config}:8: workers: expected a positive integer, got 0" in result.stderr
    assert f"{config}:9: unknown key 'bogus'" in result.stderr
    assert f"{config}:11: timeouts.read: expected a positive number" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_bad_lines_and_a_mismatched_key(tmp_path: Path, tls: TlsPair) -> None:
    other = trustme.CA().issue_cert("localhost")
    wrong_key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(wrong_key))
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000")
    config.write_text(config.read_text().replace("key: server.key", f"key: {wrong_key}"))
    with (tmp_path / "htpasswd").open("a") as htpasswd:
        htpasswd.write("broken-line-without-colon\nplain:secret\n")
    (tmp_path / "groups").write_text("pusher push\n")
    result = regproxy("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert f"{tmp_path / 'htpasswd'}:4: malformed line, expected user:hash" in problems
    assert any(p.startswith(f"{tmp_path / 'htpasswd'}:5: user 'plain'") for p in problems)
    assert f"{tmp_path / 'groups'}:1: malformed line, expected 'group: user ...'" in problems
    assert any("certificate does not match the key" in p for p in problems)


def test_serve_refuses_a_broken_config_without_traceback(tmp_path: Path, tls: TlsPair) -> None:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra="listen: nowhere\n")
    result = regproxy("serve", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "duplicate key 'listen'" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_override_the_config_file(tmp_path: Path, tls: TlsPair) -> None:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000")
    missing = tmp_path / "nope.htpasswd"
    result = regproxy("serve", "-c", str(config), "--htpasswd", str(missing), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{missing}: cannot read: No such file or directory" in result.stderr


async def test_sigterm_drains_in_flight_download(served: Served, upstream: FakeUpstream) -> None:
    size = 8 * MIB
    started = asyncio.Event()

    async def slow_blob(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        started.set()
        for _ in range(8):
            await asyncio.sleep(0.2)
            await response.write(b"z" * MIB)
        return response

    digest = "sha256:" + "c" * 64
    upstream.handlers[f"/v2/a/blobs/{digest}"] = slow_blob
    auth = {"Authorization": basic("pull", USERS["pull"])}

    async def download() -> int:
        async with served.session.get(served.url + f"/v2/a/blobs/{digest}", headers=auth) as r:
            return len(await r.read())

    transfer = asyncio.create_task(download())
    await started.wait()
    served.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, force_close=True))
    with pytest.raises(aiohttp.ClientConnectionError):
        await fresh.get(served.url + "/v2/", headers=auth)
    await fresh.close()
    assert await transfer == size
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


@pytest.mark.parametrize("served", ["workers: 2\n"], indirect=True)
async def test_workers_serve_and_stop_together(served: Served) -> None:
    auth = {"Authorization": basic("pull", USERS["pull"])}
    for _ in range(20):
        async with served.session.get(served.url + "/v2/", headers=auth) as resp:
            assert resp.status == 200
    children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children")
    pids = [int(p) for p in children.read_text().split()]
    assert len(pids) == 2
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


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


@pytest.mark.parametrize("served", ["workers: 2\nthrottle:\n  attempts: 3\n"], indirect=True)
async def test_workers_share_failed_logins(served: Served, tls: TlsPair) -> None:
    """Guesses alternate between connections held by each of the two workers: the address is
    locked after 3 failures in all, not 3 per worker."""
    parent = served.process.pid
    workers = [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    port = int(served.url.rsplit(":", 1)[1])
    held: dict[int, KeptConnection] = {}
    opened: list[KeptConnection] = []
    for _ in range(40):  # new connections until each worker holds one
        connection = await KeptConnection.open(port, tls)
        opened.append(connection)
        assert await connection.get("/v2/") == 401  # no credentials: not a failed login
        owner = worker_holding(port, connection.port, workers)
        if owner is not None:
            held.setdefault(owner, connection)
        if len(held) == 2:
            break
    assert len(held) == 2, "the kernel never gave the second worker a connection"
    first, second = held.values()
    for connection in opened:
        if connection not in (first, second):
            await connection.close()
    wrong = basic("pull", "guess")
    statuses = [await (first, second)[guess % 2].get("/v2/", wrong) for guess in range(8)]
    await first.close()
    await second.close()
    assert statuses == [401] * 3 + [429] * 5


async def one_connection_per_worker(served: Served, tls: TlsPair) -> tuple[KeptConnection, ...]:
    """New connections until each of the two workers holds one (the others are closed)."""
    parent = served.process.pid
    workers = [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    port = int(served.url.rsplit(":", 1)[1])
    held: dict[int, KeptConnection] = {}
    for _ in range(40):
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


@pytest.mark.parametrize("served", ["workers: 2\ncache:\n  ttl: 60\n"], indirect=True)
async def test_a_blob_deleted_through_one_worker_is_gone_in_every_worker(
    served: Served, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """Both workers remember that the blob exists; a DELETE through one of them, and every
    HEAD after it, through either, answers 404."""
    digest = "sha256:" + "ab" * 32
    path = f"/v2/push/app/blobs/{digest}"
    present = [True]

    async def blob(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            present[0] = False
            return web.Response(status=202)
        if not present[0]:
            return web.Response(status=404)
        return web.Response(headers={"Cache-Control": "max-age=31536000", "Content-Length": "7"})

    upstream.handlers[path] = blob
    first, second = await one_connection_per_worker(served, tls)
    push = basic("push", USERS["push"])
    for _ in range(3):
        assert [await c.get(path, push, "HEAD") for c in (first, second)] == [200, 200]
    heads = [r for r in upstream.requests if r.method == "HEAD"]
    assert len(heads) == 2  # one per worker: each now answers from memory
    assert await first.get(path, push, "DELETE") == 202
    assert await second.get(path, push, "HEAD") == 404  # at once, through the other worker
    for _ in range(5):
        assert [await c.get(path, push, "HEAD") for c in (first, second)] == [404, 404]
    await first.close()
    await second.close()


# The fixture pins one worker unless the config mentions workers: this comment leaves the key
# unset, so the default applies.
@pytest.mark.parametrize("served", ["# workers: left to its default\n"], indirect=True)
async def test_one_worker_per_cpu_by_default(served: Served) -> None:
    cpus = len(os.sched_getaffinity(0))
    children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children")
    assert len(children.read_text().split()) == (cpus if cpus > 1 else 0)  # 1: no fork
    auth = {"Authorization": basic("pull", USERS["pull"])}
    async with served.session.get(served.url + "/v2/", headers=auth) as resp:
        assert resp.status == 200


async def test_access_log_line(served: Served) -> None:
    auth = {"Authorization": basic("push", USERS["push"])}
    async with served.session.get(served.url + "/v2/", headers=auth) as resp:
        assert resp.status == 200
    async with served.session.get(served.url + "/v2/") as resp:
        assert resp.status == 401
    served.process.send_signal(signal.SIGTERM)
    await served.process.wait()
    lines = served.stdout.read_text().splitlines()
    stamp = r"\[\d\d/\w{{3}}/\d{{4}}:\d\d:\d\d:\d\d [+-]\d{{4}}\]"
    common = r"127\.0\.0\.1 - {user} " + stamp + r' "GET /v2/ HTTP/1\.1" {status} {size} \d+'
    assert re.fullmatch(common.format(user="push", status=200, size=2), lines[0])
    assert re.fullmatch(common.format(user="-", status=401, size=r"\d+"), lines[1])


async def test_large_download_memory_stays_flat(served: Served, upstream: FakeUpstream) -> None:
    size = 512 * MIB
    block = os.urandom(MIB)
    digest = "sha256:" + "d" * 64

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        for _ in range(size // MIB):
            await response.write(block)
        return response

    upstream.handlers[f"/v2/a/blobs/{digest}"] = big
    auth = {"Authorization": basic("pull", USERS["pull"])}
    received = 0
    async with served.session.get(served.url + f"/v2/a/blobs/{digest}", headers=auth) as resp:
        async for chunk in resp.content.iter_any():
            received += len(chunk)
    assert received == size
    status = Path(f"/proc/{served.process.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    assert peak_kib < 128 * 1024, f"peak RSS {peak_kib} KiB for a {size} byte body"


def test_passwd_writes_files_apache_accepts(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("# team users\nold:$apr1$abcdefgh$0123456789012345678901\n")
    htpasswd.chmod(0o640)
    added = regproxy("passwd", str(htpasswd), "alice", "--stdin", cwd=tmp_path, stdin="a:b c\n")
    assert added.returncode == 0 and "added user alice" in added.stdout
    apache = subprocess.run(
        ["htpasswd", "-vb", str(htpasswd), "alice", "a:b c"], capture_output=True, text=True
    )
    assert apache.returncode == 0, apache.stderr
    assert htpasswd.read_text().startswith("# team users\nold:$apr1$")
    assert htpasswd.stat().st_mode & 0o777 == 0o640
    ok = regproxy("passwd", str(htpasswd), "alice", "--verify", "--stdin", cwd=tmp_path,
                  stdin="a:b c\n")  # fmt: skip
    bad = regproxy("passwd", str(htpasswd), "alice", "--verify", "--stdin", cwd=tmp_path,
                   stdin="nope\n")  # fmt: skip
    assert (ok.returncode, bad.returncode) == (0, 3)
    changed = regproxy("passwd", str(htpasswd), "alice", "--stdin", "--cost", "5",
                       cwd=tmp_path, stdin="new\n")  # fmt: skip
    assert changed.returncode == 0 and "updated user alice" in changed.stdout
    assert "alice:$2y$05$" in htpasswd.read_text()
    deleted = regproxy("passwd", str(htpasswd), "alice", "--delete", cwd=tmp_path)
    assert deleted.returncode == 0 and "alice" not in htpasswd.read_text()
    again = regproxy("passwd", str(htpasswd), "alice", "--delete", cwd=tmp_path)
    assert again.returncode == 1 and "not found" in again.stderr


def test_import_writes_yaml_and_lists_what_it_could_not_translate(tmp_path: Path) -> None:
    from proxy.config import load
    from tests.test_importer import RECIPE_HTTPD

    httpd = tmp_path / "httpd.conf"
    httpd.write_text(RECIPE_HTTPD)
    out = tmp_path / "regproxy.yaml"
    result = regproxy("import", str(httpd), "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    notes = result.stderr.splitlines()
    assert notes and all(n.startswith(f"not translated: {httpd}:") for n in notes)
    config = load(out)
    assert (config.listen.port, config.push_group) == (5043, "pusher")
    assert config.htpasswd.name == "httpd.htpasswd" and config.upstream == "http://registry:5000"
    to_stdout = regproxy("import", str(httpd), cwd=tmp_path)
    assert to_stdout.stdout == out.read_text()
    (tmp_path / "junk.conf").write_bytes(b"\x00\x01binary")
    junk = regproxy("import", str(tmp_path / "junk.conf"), cwd=tmp_path)
    assert junk.returncode == 1 and "junk.conf" in junk.stderr and "Traceback" not in junk.stderr


@pytest.mark.parametrize(
    ("served", "group"),
    # True: Ctrl-C at a terminal signals the group
    [("secret_file: secret\n", False), ("workers: 2\nsecret_file: secret\n", True)],
    indirect=["served"],
)
async def test_sigterm_lets_an_upload_in_flight_finish(
    served: Served, upstream: FakeUpstream, group: bool
) -> None:
    received = asyncio.Event()

    async def slow_upload(request: web.Request) -> web.StreamResponse:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            received.set()
        return web.Response(status=202, headers={"Range": f"0-{total - 1}"})

    upstream.handlers["/v2/a/blobs/uploads/u9"] = slow_upload
    upstream.streaming.add("/v2/a/blobs/uploads/u9")
    auth = {"Authorization": basic("push", USERS["push"])}

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"u" * MIB
            await asyncio.sleep(0.15)

    async def upload() -> tuple[int, str]:
        path = secret_bound("/v2/a/blobs/uploads/u9", "push")
        async with served.session.patch(served.url + path, data=body(), headers=auth) as resp:
            return resp.status, resp.headers.get("Range", "")

    transfer = asyncio.create_task(upload())
    await asyncio.wait_for(received.wait(), 10)
    if group:
        os.killpg(served.process.pid, signal.SIGINT)
    else:
        served.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    with pytest.raises(aiohttp.ClientConnectionError):
        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
        try:
            await fresh.get(served.url + "/v2/", headers=auth)
        finally:
            await fresh.close()
    assert await asyncio.wait_for(transfer, 30) == (202, f"0-{10 * MIB - 1}")  # all of it
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


BROKEN = {
    "empty htpasswd": ("htpasswd", b"", "htpasswd: no usable users in this file"),
    "binary htpasswd": ("htpasswd", b"\x89PNG\r\n\x1a\n\x00", "htpasswd:1: not UTF-8 text"),
    "half-written htpasswd": ("htpasswd", b"push:$2y$05$abc", "htpasswd: no usable users"),
    "binary groups": ("groups", b"pusher: push\n\x00\x01", "groups:2: binary data (NUL byte)"),
    "huge groups": ("groups", b"# x\n" * (5 * 1024 * 1024), "groups: larger than 16777216"),
    "empty acl": ("acl.yaml", b"", "acl.yaml: acl: empty ACL file denies everything"),
    "half-written acl": ("acl.yaml", b"acl:\n  - users: [a\n", "acl.yaml:3: invalid YAML"),
    "half-written config": ("regproxy.yaml", b"listen: 127.0.0.1:5043\ntls:\n  cert: [", ":3:"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_are_named_at_startup(tmp_path: Path, tls: TlsPair, case: str) -> None:
    target, content, expected = BROKEN[case]
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra="acl: acl.yaml\n")
    (tmp_path / "acl.yaml").write_text("acl:\n  - actions: [pull]\n")
    (tmp_path / target).write_bytes(content)
    for command in ("check", "serve"):
        result = regproxy(command, "-c", str(config), cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "regproxy"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("regproxy ")
