"""The command line as users run it: `regproxy check`, `serve` (errors, drain on SIGTERM,
workers, flat memory), `import`, help and exit codes. (`passwd`: tests/test_passwd.py.)"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from devtools.processes import tree_cpu_seconds
from proxy.serve.supervisor import WORKER_ENV, encode
from proxy.serve.worker import STOP_GRACE
from tests.conftest import (
    ROOT,
    USERS,
    FakeUpstream,
    Served,
    TlsPair,
    basic,
    one_connection_per_worker,
    regproxy,
    secret_bound,
    serving,
    until,
    worker_pids,
    write_setup,
)

MIB = 1024 * 1024


async def refused_soon(url: str) -> None:
    """New connections are refused once the signal has been handled: try until they are (a
    connection queued where nobody accepts it any more is not refused: tried again)."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False, force_close=True),
        timeout=aiohttp.ClientTimeout(total=1),
    ) as fresh:
        for _ in range(200):
            try:
                async with fresh.get(url + "/v2/") as resp:
                    await resp.read()
            except TimeoutError:  # aiohttp's is a ClientConnectionError too: first
                pass
            except aiohttp.ClientConnectionError:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("new connections were still accepted while draining")


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


@pytest.mark.parametrize("served", ["", "workers: 2\n"], indirect=True)
async def test_sigterm_drains_in_flight_download(served: Served, upstream: FakeUpstream) -> None:
    """New connections refused at once (with workers too: each stops accepting and closes the
    socket), the download in flight finished, exit 0."""
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
    await refused_soon(served.url)
    assert not transfer.done()  # refused while the transfer is still being drained
    assert await transfer == size
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


DRAINING = "workers: 2\nmetrics:\n  listen: 127.0.0.1:{free_port}\ntimeouts:\n  drain_delay: 2\n"
DRAINING_SAID = "stopping: /health answers 503 draining for 2.0s"


@pytest.mark.parametrize("served", [DRAINING + "log_level: debug\n"], indirect=True)
async def test_sigterm_first_leaves_the_load_balancers_while_serving(
    served: Served, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """SIGTERM with a /health: for timeouts.drain_delay every worker answers /health 503
    "draining" (/live stays 200) and still serves, old connections and new, each answer
    closing its connection; then no new connections, and exit 0."""
    auth = {"Authorization": basic("pull", USERS["pull"])}
    config = (served.directory / "regproxy.yaml").read_text()
    admin = "http://" + re.findall(r"listen: (127\.0\.0\.1:\d+)", config)[1]
    err = served.directory / "regproxy.err"
    fresh = aiohttp.TCPConnector(ssl=tls.client_context(), force_close=True)
    async with aiohttp.ClientSession() as plain, aiohttp.ClientSession(connector=fresh) as new:

        async def health() -> tuple[int, object]:
            async with plain.get(admin + "/health") as response:
                return response.status, await response.json()

        assert (await health())[0] == 200
        async with served.session.get(served.url + "/v2/", headers=auth) as kept:
            assert kept.status == 200 and "Connection" not in kept.headers
        served.process.send_signal(signal.SIGTERM)
        # Both workers draining (worker 1 gets the signal from worker 0, and says so at debug
        # level): which of them holds a connection is the kernel's choice.
        await until(lambda: err.read_text().count(DRAINING_SAID) == 2)
        await until(lambda: _status(health(), 503))
        assert (await health())[1] == {"status": "draining", "upstream": upstream.url}
        async with plain.get(admin + "/live") as live:
            assert live.status == 200
        for session in (served.session, new):  # the kept-alive connection, and a new one
            async with session.get(served.url + "/v2/", headers=auth) as answer:
                assert answer.status == 200 and answer.headers["Connection"] == "close"
    await refused_soon(served.url)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    said = err.read_text()
    assert said.count(f"INFO regproxy: {DRAINING_SAID}") == 1  # worker 0 says it


async def _status(answer: Awaitable[tuple[int, object]], expected: int) -> bool:
    return (await answer)[0] == expected


@pytest.mark.parametrize(
    "served", [DRAINING.replace("drain_delay: 2", "drain_delay: 600")], indirect=True
)
async def test_sigint_stops_without_the_drain_delay(served: Served) -> None:
    """Ctrl-C in a terminal: no load balancer to wait for (exiting well within 600 s)."""
    served.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    assert "draining for" not in (served.directory / "regproxy.err").read_text()


# A hash no computer checks in under seconds (bcrypt cost 19): a login with it keeps a thread
# of the hashing pool busy that long, and a worker's exit waits for its threads.
SLOW_HASH = "$2y$19$" + "." * 53
CLOSING = 2.0  # what closing after the drain may take, without Redis (proxy/serve/server.py)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_stop_held_up_past_its_bound_says_where_and_exits(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream, workers: int
) -> None:
    """A worker still running STOP_GRACE seconds past the most its stop may take is stuck
    (here: exiting waits for the hashing thread a login started): every thread's stack to
    stderr, exit 1. With several, worker 0 waits longer, so the stuck one says where."""
    extra = f"workers: {workers}\ntimeouts:\n  drain: 0.2\n  drain_delay: 0\n"
    config = write_setup(tmp_path, tls, upstream.url, extra)
    with (tmp_path / "htpasswd").open("a") as htpasswd:
        htpasswd.write(f"slow:{SLOW_HASH}\n")
    port = int(re.search(r"listen: 127.0.0.1:(\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    async with (
        serving(["serve", "-c", str(config)], tmp_path) as process,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as client,
    ):
        auth = {"Authorization": basic("slow", "guess")}
        login = asyncio.ensure_future(client.get(f"https://localhost:{port}/v2/", headers=auth))
        cpu = tree_cpu_seconds(process.pid)
        await until(lambda: tree_cpu_seconds(process.pid) > cpu + 0.3, 30, "no hash running")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await asyncio.wait_for(process.wait(), 60) == 1
        took = time.monotonic() - started
        with pytest.raises(aiohttp.ClientError):
            await login  # cut at the drain's end
    err = (tmp_path / "regproxy.err").read_text()
    # Not the hash's 40 s: the stuck worker's bound (worker 0's, if the login went to it).
    assert STOP_GRACE <= took < 0.2 + CLOSING + 2 * STOP_GRACE + 3, err
    assert "drain timeout (0.2s)" in err and "Timeout (0:00:" in err, err
    # Where: the main thread joining the hashing pool's, which is checking the password.
    assert "in _python_exit" in err and "credentials.py" in err, err


@pytest.mark.parametrize("served", ["workers: 3\n"], indirect=True)
async def test_workers_serve_and_stop_together(served: Served) -> None:
    """Worker 0 is `serve`'s own process and starts the others: 3 workers, 3 processes."""
    auth = {"Authorization": basic("pull", USERS["pull"])}
    for _ in range(20):
        async with served.session.get(served.url + "/v2/", headers=auth) as resp:
            assert resp.status == 200
    pids = worker_pids(served.process.pid)
    assert len(pids) == 3
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    log = (served.directory / "regproxy.err").read_text()
    assert "with 3 workers" in log and "draining the workers" in log and "stopped" in log


def test_worker_0_finding_the_files_broken_stops_the_workers_it_started(
    tmp_path: Path, tls: TlsPair
) -> None:
    """Worker 0 starts the others before reading the files itself (they read theirs
    meanwhile); files it cannot use stop all of them, it alone says why (as `serve` says it:
    it is the process `serve` became), and nothing of theirs is left behind."""
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra="workers: 2\n")
    config.write_text(config.read_text() + "acl: acl.yaml\n")
    (tmp_path / "acl.yaml").write_text("acl:\n  - actions: [fly]\n")
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        spec = {
            "listen_fd": sock.fileno(), "config": str(config), "overrides": {}, "workers": 2,
            "log_level": "info", "listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:5000",
            "metrics": False, "index": 0,
        }  # fmt: skip
        env = {**os.environ, "TMPDIR": str(runtime), WORKER_ENV: encode(spec)}
        result = subprocess.run(
            [sys.executable, "-m", "proxy.serve.worker"], cwd=ROOT, env=env,
            pass_fds=[sock.fileno()], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    problem = f"{tmp_path / 'acl.yaml'}:2: actions: unknown action(s) ['fly']"
    assert result.stderr.startswith(problem) and result.stderr.count("\n") == 1, result.stderr
    assert list(runtime.iterdir()) == []  # the workers' shared files removed, once they exited


@pytest.mark.parametrize("served", ["workers: 2\n"], indirect=True)
async def test_a_worker_that_dies_is_started_again(served: Served, tls: TlsPair) -> None:
    """Worker 0 notices a worker killed outright and starts another, which serves."""
    first = worker_pids(served.process.pid)[1]
    os.kill(first, signal.SIGKILL)
    await until(lambda: worker_pids(served.process.pid)[1:] not in ([], [first]), 30)
    log = (served.directory / "regproxy.err").read_text()
    assert f"worker 1 (pid {first}) exited with -9: starting another" in log
    held = await one_connection_per_worker(served, tls)  # the new one takes connections
    for connection in held:
        await connection.close()
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


@pytest.mark.parametrize(
    "served", ["workers: 2\naccess_log:\n  format: json\n  path: access.jsonl\n"], indirect=True
)
async def test_worker_0_relays_signals_to_the_others(served: Served, tls: TlsPair) -> None:
    """SIGUSR1 to `serve`'s process after logrotate's rename: worker 0 reopens its log and
    relays the signal, so a request through either worker is written to the new file."""
    log_file, err = served.directory / "access.jsonl", served.directory / "regproxy.err"
    held = await one_connection_per_worker(served, tls)
    await until(lambda: log_file.exists() and log_file.read_text().count("\n") >= 2)
    log_file.rename(served.directory / "access.jsonl.1")
    served.process.send_signal(signal.SIGUSR1)
    await until(lambda: err.read_text().count("log files reopened") == 2)
    assert [await connection.get("/v2/") for connection in held] == [401, 401]
    await until(lambda: log_file.exists() and log_file.read_text().count("\n") == 2)
    for connection in held:
        await connection.close()


@pytest.mark.parametrize("served", ["workers: 2\n"], indirect=True)
async def test_workers_stop_when_worker_0_is_killed(served: Served) -> None:
    """SIGKILL leaves worker 0 no chance to relay anything: the kernel tells the others
    (PR_SET_PDEATHSIG), and they drain and exit instead of serving on, orphaned."""
    pids = worker_pids(served.process.pid)[1:]
    assert len(pids) == 1
    served.process.kill()
    await served.process.wait()
    for _ in range(400):
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            break
        await asyncio.sleep(0.025)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.mark.parametrize("served", ["workers: 2\nthrottle:\n  attempts: 3\n"], indirect=True)
async def test_workers_share_failed_logins(served: Served, tls: TlsPair) -> None:
    """Guesses alternate between connections held by each of the two workers: the address is
    locked after 3 failures in all, not 3 per worker."""
    first, second = await one_connection_per_worker(served, tls)
    wrong = basic("pull", "guess")
    statuses = [await (first, second)[guess % 2].get("/v2/", wrong) for guess in range(8)]
    await first.close()
    await second.close()
    assert statuses == [401] * 3 + [429] * 5


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
    assert len(worker_pids(served.process.pid)) == cpus
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
    common = r"127\.0\.0\.1 - {user} " + stamp + r' "GET /v2/ HTTP/1\.1" {status} {size}'
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


def test_check_names_users_and_groups_placeholders_pass_by(tmp_path: Path, tls: TlsPair) -> None:
    acl = "acl:\n  - repositories: ['${user}/**', '${group}/**']\n    actions: ['*']\n"
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", acl)
    with (tmp_path / "htpasswd").open("a") as htpasswd:
        htpasswd.write("Carol:$apr1$abcdefgh$0123456789012345678901\n")
    (tmp_path / "groups").write_text("pusher: push\nQA: push\n")
    result = regproxy("check", "-c", str(config), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "configuration ok\n")
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'htpasswd'}:4: note: user 'Carol' never matches ${{user}} in the ACL"
        " (not a single lowercase repository path component)",
        f"{tmp_path / 'groups'}:2: note: group 'QA' never matches ${{group}} in the ACL"
        " (not a single lowercase repository path component)",
    ]
    with (tmp_path / "htpasswd").open("a") as htpasswd:
        htpasswd.write("alice/sub:$apr1$abcdefgh$0123456789012345678901\n")
    refused = regproxy("check", "-c", str(config), cwd=tmp_path)
    assert refused.returncode == 1
    assert f"{tmp_path / 'htpasswd'}:5: user 'alice/sub': '/' is not allowed" in refused.stderr


def test_import_writes_yaml_and_lists_what_it_could_not_translate(tmp_path: Path) -> None:
    from proxy.conf.config import load
    from tests.unit.test_importer import RECIPE_HTTPD

    httpd = tmp_path / "httpd.conf"
    httpd.write_text(RECIPE_HTTPD)
    out = tmp_path / "regproxy.yaml"
    result = regproxy("import", str(httpd), "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    notes = result.stderr.splitlines()
    translated = [n for n in notes if n.startswith(f"translated: {httpd}:")]
    left_out = [n for n in notes if n.startswith(f"not translated: {httpd}:")]
    assert len(translated) + len(left_out) == len(notes)
    assert any(": Listen 5043 — Apache listens on every interface" in n for n in translated)
    assert any(": AuthUserFile " in n for n in translated)  # kept as written
    assert any(": LogLevel warn" in n for n in left_out)
    assert any(": Header always set" in n for n in left_out)  # regproxy does it itself
    text = out.read_text()
    assert text.index("# Translated, with a difference") < text.index("# Not translated")
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
    await refused_soon(served.url)
    assert await asyncio.wait_for(transfer, 30) == (202, f"0-{10 * MIB - 1}")  # all of it
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


BROKEN = {
    "empty htpasswd": ("htpasswd", b"", "htpasswd: no usable users in this file"),
    "binary htpasswd": ("htpasswd", b"\x89PNG\r\n\x1a\n\x00", "htpasswd:1: not UTF-8 text"),
    "half-written htpasswd": ("htpasswd", b"push:$2y$05$abc", "htpasswd: no usable users"),
    "binary groups": ("groups", b"pusher: push\n\x00\x01", "groups:2: binary data (NUL byte)"),
    "huge groups": ("groups", b"# x\n" * (5 * 1024 * 1024), "groups: larger than 16777216"),
    "empty acl": ("acl.yaml", b"", "acl.yaml: acl: empty ACL file denies everything"),
    "half-written acl": ("acl.yaml", b"acl:\n  - users: [a\n", "acl.yaml:2: invalid YAML"),
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


# User mistakes: every one ends in a message naming what is wrong, never a traceback.
MISTAKES = {
    # id: (argv, stdin, exit code, text on stderr); {d} is the test's directory
    "config is a directory": (["check", "-c", "{d}"], None, 1, "{d}: cannot read: Is a directory"),
    "config missing": (["serve", "-c", "{d}/nope.yaml"], None, 1, "nope.yaml: cannot read"),
    "htpasswd is a directory": (
        ["check", "-c", "{d}/regproxy.yaml", "--htpasswd", "{d}"],
        None,
        1,
        "Is a directory",
    ),
    "cert is a directory": (
        ["check", "-c", "{d}/regproxy.yaml", "--tls-cert", "{d}"],
        None,
        1,
        "{d}: TLS certificate: cannot read: Is a directory",
    ),
    "acl file missing": (
        ["explain", "-c", "{d}/regproxy.yaml", "--acl", "{d}/none.yaml", "push", "pull", "a"],
        None,
        1,
        "{d}/none.yaml: cannot read: No such file or directory",
    ),
    "explain bad client": (
        ["explain", "-c", "{d}/regproxy.yaml", "--client", "10.1", "push", "pull", "a"],
        None,
        2,
        "--client: ",
    ),
    "explain bad repository": (
        ["explain", "-c", "{d}/regproxy.yaml", "push", "pull", "A//b"],
        None,
        2,
        "'A//b' is not",
    ),
    "explain --acl before args": (  # the README's order: flags first
        ["explain", "--acl", "{d}/acl.yaml", "-c", "{d}/regproxy.yaml", "push", "push", "a"],
        None,
        0,
        "",
    ),
    "import missing": (["import", "{d}/httpd.conf"], None, 1, "httpd.conf: cannot read"),
    "import directory": (["import", "{d}"], None, 1, "{d}: cannot read: Is a directory"),
    "import -o into a missing directory": (
        ["import", "{d}/recipe.conf", "-o", "{d}/no/such/dir.yaml"],
        None,
        1,
        "{d}/no/such/dir.yaml: cannot write: No such file or directory",
    ),
    "import -o onto a directory, forced": (
        ["import", "{d}/recipe.conf", "-o", "{d}/sub", "--force"],
        None,
        1,
        "{d}/sub: cannot write",
    ),
    "passwd file is a directory": (
        ["passwd", "{d}", "alice", "--stdin"],
        "pw\n",
        1,
        "{d}: cannot read: Is a directory",
    ),
    "passwd in a missing directory": (
        ["passwd", "{d}/no/htpasswd", "alice", "--stdin"],
        "pw\n",
        1,
        "{d}/no/htpasswd: cannot write: No such file or directory",
    ),
    "passwd empty password": (["passwd", "{d}/ht", "alice", "--stdin"], "\n", 1, "empty password"),
    "passwd end of input": (["passwd", "{d}/ht", "alice", "--stdin"], "", 1, "standard input is"),
    "passwd --cost": (["passwd", "{d}/ht", "alice", "--cost", "3"], None, 2, "--cost 3: bcrypt"),
    "passwd --delete unknown": (
        ["passwd", "{d}/htpasswd", "nobody", "--delete"],
        None,
        1,
        "user 'nobody' not found",
    ),
    "passwd --verify unknown": (
        ["passwd", "{d}/htpasswd", "nobody", "--verify", "--stdin"],
        "x\n",
        1,
        "not found",
    ),
    "unknown option": (["check", "--bogus"], None, 2, "unrecognized arguments: --bogus"),
    "workers not a number": (["serve", "--workers", "two"], None, 2, "invalid int value"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_user_mistakes_get_a_message_not_a_traceback(
    tmp_path: Path, tls: TlsPair, case: str
) -> None:
    argv, stdin, code, expected = MISTAKES[case]
    write_setup(tmp_path, tls, "http://127.0.0.1:5000")
    (tmp_path / "acl.yaml").write_text("- actions: [pull, push]\n")
    (tmp_path / "sub").mkdir()
    from tests.unit.test_importer import RECIPE_HTTPD

    (tmp_path / "recipe.conf").write_text(RECIPE_HTTPD)
    args = [a.replace("{d}", str(tmp_path)) for a in argv]
    result = regproxy(*args, cwd=tmp_path, stdin=stdin)
    assert result.returncode == code, result.stderr
    assert expected.replace("{d}", str(tmp_path)) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_import_refuses_to_replace_a_file_without_force(tmp_path: Path) -> None:
    from tests.unit.test_importer import RECIPE_HTTPD

    (tmp_path / "httpd.conf").write_text(RECIPE_HTTPD)
    out = tmp_path / "regproxy.yaml"
    out.write_text("# mine\n")
    refused = regproxy("import", "httpd.conf", "-o", str(out), cwd=tmp_path)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == f"{out}: exists, not replaced (--force replaces it)\n"
    assert out.read_text() == "# mine\n"
    forced = regproxy("import", "httpd.conf", "-o", str(out), "--force", cwd=tmp_path)
    assert forced.returncode == 0 and out.read_text().startswith("# Imported from httpd.conf")


def problems_of(command: str, config: Path, cwd: Path, *flags: str) -> set[str]:
    result = regproxy(command, "-c", str(config), *flags, cwd=cwd)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = {line.removesuffix(" (line ignored)") for line in result.stderr.splitlines()}
    return lines - {line for line in lines if line.startswith("configuration has ")}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_and_check_report_the_same_problems(
    tmp_path: Path, tls: TlsPair, workers: str
) -> None:
    """One function finds them for both: a missing group file, a bad htpasswd line, a
    certificate that is no PEM and a token key that is not there, all at once; `serve` alone
    (one worker) or as worker 0 of several (which reads them beside the others), alike."""
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra=(
        "token:\n  issuer: r\n  service: s\n  key: token.key\n  certificate: server.crt\n"
    ))  # fmt: skip
    (tmp_path / "groups").unlink()
    with (tmp_path / "htpasswd").open("a") as htpasswd:
        htpasswd.write("no-colon-here\n")
    (tmp_path / "server.crt").write_text("not a certificate\n")
    check = problems_of("check", config, tmp_path)
    serve = problems_of("serve", config, tmp_path, "--workers", workers)
    assert check == serve
    assert f"{tmp_path / 'groups'}: cannot read: No such file or directory" in check
    assert f"{tmp_path / 'htpasswd'}:4: malformed line, expected user:hash" in check
    assert f"{tmp_path / 'server.crt'}: TLS certificate: no PEM certificate in this file" in check
    assert any(p.startswith(f"{tmp_path / 'token.key'}:") for p in check), check
    assert len(check) == 4, check


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_says_the_files_problems_before_the_address(
    tmp_path: Path, tls: TlsPair, workers: str
) -> None:
    """An address in use and a broken ACL: the ACL's problem, as one worker and `check`
    say it; the files good, the address's."""
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra="acl: acl.yaml\n")
    (tmp_path / "acl.yaml").write_text("acl:\n  - actions: [fly]\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ("-c", str(config), "--workers", workers, "--listen", f"127.0.0.1:{port}")
        broken = regproxy("serve", *flags, cwd=tmp_path)
        (tmp_path / "acl.yaml").write_text("acl:\n  - actions: [pull]\n")
        refused = regproxy("serve", *flags, cwd=tmp_path)
    assert broken.returncode == 1 and refused.returncode == 1
    assert (
        broken.stderr == f"{tmp_path / 'acl.yaml'}:2: actions: unknown action(s) ['fly']: "
        "use pull, push, delete or '*'\n"
    )
    assert refused.stderr.endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use\n")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_log_file_that_refuses_to_open_is_said_once(
    tmp_path: Path, tls: TlsPair, workers: str
) -> None:
    """An audit log in /proc: refused by the check (as a user) or when opened (as root, whom
    the check lets write anywhere); either way one line naming it, by `serve` or worker 0."""
    audit = "/proc/regproxy-audit.log"
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra=f"audit_log: {audit}\n")
    served = regproxy("serve", "-c", str(config), "--workers", workers, cwd=tmp_path)
    assert served.returncode == 1, served.stderr
    assert served.stderr.startswith(f"{audit}: audit_log: cannot append: "), served.stderr
    assert served.stderr.count("\n") == 1 and "Traceback" not in served.stderr


def test_tls_errors_name_the_certificate_the_key_or_the_pair(tmp_path: Path, tls: TlsPair) -> None:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    good_cert, good_key = cert.read_bytes(), key.read_bytes()
    other = trustme.CA().issue_cert("localhost").private_key_pem.bytes()
    encrypted = subprocess.run(
        ["openssl", "pkey", "-aes256", "-passout", "pass:x"], input=good_key,
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    cases = [  # (certificate, key, the one problem check prints)
        (b"garbage\n", good_key, f"{cert}: TLS certificate: no PEM certificate in this file"),
        (good_key, good_key, f"{cert}: TLS certificate: no PEM certificate in this file"),
        (good_cert, b"garbage\n", f"{key}: TLS key: no PEM private key in this file"),
        (good_cert, good_cert, f"{key}: TLS key: no PEM private key in this file"),
        (good_cert, encrypted, f"{key}: TLS key: encrypted with a passphrase"),
        (good_cert, other, f"{cert} + {key}: the certificate does not match the key"),
    ]
    for cert_pem, key_pem, expected in cases:
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        result = regproxy("check", "-c", str(config), cwd=tmp_path)
        assert result.returncode == 1
        (problem, summary) = result.stderr.splitlines()
        assert problem.startswith(expected), result.stderr
        assert summary == "configuration has 1 problem(s)"


def test_check_names_what_make_run_creates_only_in_a_checkout(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "regproxy.yaml").write_text((ROOT / "conf" / "regproxy.yaml").read_text())
    elsewhere = regproxy("check", cwd=tmp_path)
    assert elsewhere.returncode == 1 and "make run" not in elsewhere.stderr
    assert "certs/server.crt: TLS certificate: cannot read" in elsewhere.stderr  # normalised
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run.py").write_text("")
    checkout = regproxy("check", cwd=tmp_path)
    assert checkout.stderr.count("(`make run` creates it: ") == 4
    with_flag = regproxy("check", "--htpasswd", "conf/htpasswd", cwd=tmp_path)
    assert "make run" not in with_flag.stderr  # make run does not pass flags


def test_paths_through_a_symbolic_link_are_not_normalised_away(tmp_path: Path) -> None:
    """conf -> real/conf: conf/../certs is real/certs, not ./certs; shown as it was written."""
    (tmp_path / "real" / "conf").mkdir(parents=True)
    (tmp_path / "conf").symlink_to(tmp_path / "real" / "conf")
    (tmp_path / "real" / "conf" / "r.yaml").write_text("tls:\n  cert: ../certs/s.crt\n")
    result = regproxy("check", "-c", "conf/r.yaml", cwd=tmp_path)
    assert "conf/../certs/s.crt: TLS certificate: cannot read" in result.stderr
    (tmp_path / "real" / "conf" / "r.yaml").write_text("tls:\n  cert: ../c/./s.crt\n")
    (tmp_path / "conf").unlink()
    (tmp_path / "real" / "conf").rename(tmp_path / "conf")
    result = regproxy("check", "-c", "conf/r.yaml", cwd=tmp_path)
    assert "\nc/s.crt: TLS certificate: cannot read" in "\n" + result.stderr


def test_help_is_written_for_users_with_exit_codes() -> None:
    from proxy.cli.main import _parser

    top = regproxy("--help", cwd=ROOT)
    assert top.returncode == 0
    assert top.stdout.startswith("usage: regproxy [-h] [--version] COMMAND ...\n\nregproxy: an")
    assert "exit codes:\n  0 " in top.stdout and "130  interrupted (Ctrl-C)" in top.stdout
    assert "->" not in top.stdout  # no developer shorthand
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        shown = regproxy(name, "--help", cwd=ROOT)
        assert shown.returncode == 0 and "exit codes:\n  0 " in shown.stdout, name
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)  # every option says what it is for


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("access_log:\n  path: {d}/no/access.log\n", "{d}/no/access.log: access_log.path: cannot "
         "append: directory {d}/no does not exist"),
        ("audit_log: {d}/sub\n", "{d}/sub: audit_log: cannot append: it is a directory"),
    ],
    ids=["missing directory", "a directory"],
)  # fmt: skip
def test_log_files_that_cannot_be_appended_to(
    tmp_path: Path, tls: TlsPair, extra: str, expected: str
) -> None:
    (tmp_path / "sub").mkdir()
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", extra.format(d=tmp_path))
    for command in ("check", "serve"):
        result = regproxy(command, "-c", str(config), cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert expected.format(d=tmp_path) in result.stderr.splitlines()
