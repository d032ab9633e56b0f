"""The image's entrypoint and health check as the image runs them, without a container engine:
compose/entrypoint.sh started as root (setpriv drops to uid 10001 with two capabilities, as in
the container), with compose's own command line, against the recipe's files and a root-owned
0600 domain.key."""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import yaml

from devtools.net import free_port
from tests.conftest import ENV, FakeUpstream, basic, htpasswd_text, worker_pids

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "compose" / "entrypoint.sh"
HEALTHCHECK = ROOT / "compose" / "healthcheck.py"
IMAGE_ENV = {**ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
CAP_NET_BIND_SERVICE, CAP_DAC_READ_SEARCH = 1 << 10, 1 << 2
RUN_AS = 10001

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the entrypoint starts as root")


def write_pair(auth: Path, ca: trustme.CA) -> None:
    """domain.crt, and domain.key as OpenSSL writes it: 0600, owned by root."""
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    for name, pem in (
        ("domain.crt", leaf.cert_chain_pems[0]),
        ("domain.key", leaf.private_key_pem),
    ):
        tmp = auth / f".{name}.new"
        pem.write_to_path(str(tmp))
        os.chown(tmp, 0, 0)
        tmp.chmod(0o600 if name.endswith(".key") else 0o644)
        tmp.replace(auth / name)


@pytest.fixture
def auth() -> Iterator[Path]:
    """The recipe's ./auth folder, in a directory uid 10001 may enter (its files are root's)."""
    directory = Path(tempfile.mkdtemp(prefix="regproxy-auth-", dir="/tmp"))
    directory.chmod(0o755)
    (directory / "httpd.htpasswd").write_text(htpasswd_text({"testuser": "testpassword"}))
    (directory / "httpd.groups").write_text("pusher: testuser\n")
    write_pair(directory, trustme.CA())
    yield directory
    shutil.rmtree(directory)


def compose_command(auth: Path, upstream: str, port: int) -> list[str]:
    """compose's command for regproxy, with ./auth where it is here and loopback addresses."""
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    command = [str(a) for a in compose["services"]["regproxy"]["command"]]
    assert "--listen=0.0.0.0:5043" in command and "--upstream=http://registry:5000" in command
    return [
        a.replace("/etc/regproxy", str(auth))
        .replace("0.0.0.0:5043", f"127.0.0.1:{port}")
        .replace("http://registry:5000", upstream)
        for a in command
    ]


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def served_certificate(port: int) -> bytes:
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return ssl.PEM_cert_to_DER_cert(pem)


async def test_entrypoint_runs_as_10001_with_two_capabilities_and_reads_a_root_0600_key(
    auth: Path, upstream: FakeUpstream
) -> None:
    port = free_port()
    stderr = auth.parent / f"{auth.name}.err"
    with stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            str(ENTRYPOINT), *compose_command(auth, upstream.url, port), "--workers=2",
            cwd=auth, env=IMAGE_ENV, stderr=err, stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        for _ in range(400):
            if b"listening on" in stderr.read_bytes() or process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert b"listening on" in stderr.read_bytes(), stderr.read_text()
        assert (auth / "domain.key").stat().st_mode & 0o777 == 0o600
        assert (auth / "domain.key").stat().st_uid == 0
        # sh, setpriv and regproxy exec one another: one process, worker 0 of 2
        workers = worker_pids(process.pid)
        assert len(workers) == 2
        for pid in workers:
            status = status_of(pid)
            assert status["Uid"].split() == [str(RUN_AS)] * 4
            assert status["Gid"].split() == [str(RUN_AS)] * 4
            assert status["Groups"] == ""
            expected = CAP_NET_BIND_SERVICE | CAP_DAC_READ_SEARCH
            for capabilities in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
                assert int(status[capabilities], 16) == expected, (capabilities, status)
            assert status["NoNewPrivs"] == "1"

        # The image's health check, and a real request through to the registry.
        health = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(HEALTHCHECK), f"https://127.0.0.1:{port}/v2/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert (health.returncode, health.stdout) == (
            0,
            f"healthy: https://127.0.0.1:{port}/v2/: 401\n",
        )
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        credentials = basic("testuser", "testpassword")
        writer.write(f"GET /v2/a/tags/list HTTP/1.1\r\nHost: x\r\nAuthorization: {credentials}"
                     "\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert upstream.requests[-1].path_qs == "/v2/a/tags/list"

        # A new root-owned 0600 pair, written the way an operator replaces it, is loaded live.
        before = await asyncio.to_thread(served_certificate, port)
        write_pair(auth, trustme.CA())
        for _ in range(200):  # each worker reloads; worker 0 alone says so
            if b"configuration reloaded" in stderr.read_bytes():
                break
            await asyncio.sleep(0.05)
        assert stderr.read_bytes().count(b"configuration reloaded") == 1, stderr.read_text()
        assert b"failed" not in stderr.read_bytes(), stderr.read_text()
        fresh = 0
        for _ in range(200):  # until six connections in a row, to either worker, see it
            fresh = fresh + 1 if await asyncio.to_thread(served_certificate, port) != before else 0
            if fresh == 6:
                break
            await asyncio.sleep(0.05)
        assert fresh == 6
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        stderr.unlink(missing_ok=True)


def test_without_dac_read_search_the_key_is_named_with_the_permission_it_needs(auth: Path) -> None:
    """A container started without the capability (docker run without --cap-add): the
    entrypoint says so, and check names domain.key (not domain.crt) and what it lacks."""
    for name in ("httpd.htpasswd", "httpd.groups", "domain.crt"):
        (auth / name).chmod(0o644)
    key = auth / "domain.key"
    command = compose_command(auth, "http://127.0.0.1:5000", 5043)
    result = subprocess.run(
        ["setpriv", "--bounding-set=-dac_read_search", str(ENTRYPOINT), "check", *command[1:]],
        cwd=auth, env=IMAGE_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("regproxy-entrypoint: no CAP_DAC_READ_SEARCH")
    assert lines[1:] == [
        f"{key}: TLS key: cannot read: Permission denied: uid {RUN_AS} (gid {RUN_AS}) needs read"
        f" permission on {key} (mode 0600, owner root:root): grant it to a group uid {RUN_AS}"
        " is in, or give regproxy CAP_DAC_READ_SEARCH",
        "configuration has 1 problem(s)",
    ]


def test_healthcheck_fails_when_nothing_or_something_else_answers() -> None:
    closed = free_port()
    nothing = subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"https://127.0.0.1:{closed}/v2/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert nothing.returncode == 1 and nothing.stdout.startswith("unhealthy: ")
    # A TLS server that is not a registry front end: no Docker-Distribution-Api-Version.
    leaf = trustme.CA().issue_cert("127.0.0.1")
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/v2/"
        wrong = subprocess.run(
            [sys.executable, str(HEALTHCHECK), url], capture_output=True, text=True, timeout=30
        )
        assert (wrong.returncode, wrong.stdout) == (
            1,
            f"unhealthy: {url}: 404, Docker-Distribution-Api-Version: None\n",
        )
    finally:
        server.shutdown()
        server.server_close()
