"""Quarantine end to end: real podman cannot pull a quarantined image from a real docker-registry
through regproxy (two workers) by tag, by digest or through an index holding it, and can again
after `regproxy quarantine remove`; how long after `add` (and `remove`) returns each worker
refuses (and allows) again, measured on one kept connection per worker, and after a hand
edit renamed into place; a layer of a quarantined image refused from another repository by a
proxy that never read the image (the blobs `add` recorded); and with Redis, two replicas both
refusing after one `add`."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.registry import Registry
from devtools.tls import TlsFiles
from proxy.upstream.manifests import MANIFEST_TYPES
from tests.conftest import ENV, basic, worker_holding, worker_pids
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman, make_rootfs_tar
from tests.redis_server import RedisServer

SETUP = "quarantine:\n  file: quarantine.yaml\naudit_log: audit.log\n"
PUSHER = f"testuserpush:{USERS['testuserpush']}"
READER = f"reader:{USERS['reader']}"
READER_AUTH = basic("reader", USERS["reader"])
REASON = "INC-77: a token baked into a layer"
ACCEPT = ", ".join(MANIFEST_TYPES)


def quarantine(proxy: RegproxyProcess, *args: str) -> float:
    """`regproxy quarantine ARGS` against the proxy's config; the moment it returned (printed
    with how long the command itself took: the file is written before the interpreter exits)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "quarantine", *args, "-c",
         str(proxy.directory / "regproxy.yaml")],
        env=ENV, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    returned = time.monotonic()
    print(f"\nregproxy quarantine {args[0]} took {(returned - started) * 1000:.0f} ms")
    return returned


class Kept:
    """One keep-alive TLS connection to a proxy (the worker that accepted it serves each
    request sent on it)."""

    def __init__(self, port: int, tls: TlsFiles) -> None:
        context = tls.client_context()
        self.connection = http.client.HTTPSConnection(
            "localhost", port, context=context, timeout=30
        )
        self.connection.connect()
        assert self.connection.sock is not None
        self.local_port: int = self.connection.sock.getsockname()[1]

    def status(self, path: str, method: str = "GET", **extra: str) -> int:
        """`method path` as the reader, accepting every manifest type (as podman does)."""
        headers = {"Authorization": READER_AUTH, "Accept": ACCEPT} | extra
        self.connection.request(method, path, headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


def one_per_worker(proxy: RegproxyProcess, tls: TlsFiles) -> list[Kept]:
    """A kept connection held by each of the proxy's two workers (new connections until each
    has one; the others are closed)."""
    workers = worker_pids(proxy.process.pid)
    assert len(workers) == 2, workers
    held: dict[int, Kept] = {}
    deadline = time.monotonic() + 60
    while len(held) < 2:
        assert time.monotonic() < deadline, "the second worker never took a connection"
        kept = Kept(proxy.port, tls)
        assert kept.status("/v2/") == 200
        owner = worker_holding(proxy.port, kept.local_port, workers)
        if owner is not None and owner not in held:
            held[owner] = kept
        else:
            kept.close()
    return list(held.values())


def seconds_until_each(
    connections: list[Kept], path: str, status: int, since: float
) -> list[float]:
    """Poll each connection until it answers `status` for `path`: the seconds from `since`
    until it did, per connection."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(connections):
        assert time.monotonic() < deadline, f"not every worker answered {status}"
        for n, kept in enumerate(connections):
            if n not in seen and kept.status(path) == status:
                seen[n] = time.monotonic() - since
        time.sleep(0.005)
    return [seen[n] for n in range(len(connections))]


def refused_saying(done: subprocess.CompletedProcess[str], what: str) -> bool:
    return done.returncode != 0 and what in done.stderr


@pytest.fixture
def proxy(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[RegproxyProcess]:
    running = start_regproxy(tmp_path / "proxy", registry.url, tls, SETUP + "workers: 2\n")
    yield running
    running.stop()


def pushed_image(
    host: str, tls: TlsFiles, podman: Podman, tmp_path: Path
) -> tuple[str, Callable[[], None]]:
    """team/app:1 (the image to quarantine), team/app:ok (another one) and team/app:multi (an
    index holding team/app:1's manifest as pushed) pushed by the pusher: the digest of
    team/app:1, and what pushes the index."""
    podman.build_small_image("localhost/q:1", b"quarantined content\n")
    podman.build_small_image("localhost/ok:1", b"other content\n")
    digestfile = tmp_path / "digest"
    done = podman.push("localhost/q:1", f"{host}/team/app:1", tls.cert_dir, creds=PUSHER,
                       digestfile=digestfile)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = podman.push("localhost/ok:1", f"{host}/team/app:ok", tls.cert_dir, creds=PUSHER)
    assert done.returncode == 0, done.stderr
    digest = digestfile.read_text().strip()

    def push_index() -> None:
        remote = ["--cert-dir", str(tls.cert_dir), "--creds", PUSHER]
        podman.run("manifest", "create", "localhost/multi:1", check=True)
        podman.run("manifest", "add", *remote, "localhost/multi:1",
                   f"docker://{host}/team/app@{digest}", check=True)  # fmt: skip
        done = podman.run("manifest", "push", *remote, "localhost/multi:1",
                          f"docker://{host}/team/app:multi")  # fmt: skip
        assert done.returncode == 0, done.stderr

    return digest, push_index


def test_podman_cannot_pull_a_quarantined_image_any_way_until_it_is_lifted(
    proxy: RegproxyProcess, tls: TlsFiles, podman: Podman, podman2: Podman, tmp_path: Path
) -> None:
    host = proxy.hostport
    digest, push_index = pushed_image(host, tls, podman, tmp_path)
    push_index()
    refs = (f"{host}/team/app:1", f"{host}/team/app@{digest}", f"{host}/team/app:multi")
    for ref in refs:
        done = podman2.pull(ref, tls.cert_dir, creds=READER)
        assert done.returncode == 0, (ref, done.stderr)
    workers = one_per_worker(proxy, tls)
    try:
        by_tag = "/v2/team/app/manifests/1"

        added = quarantine(proxy, "add", digest, "--reason", REASON)
        # The rename into place sets the file's ctime (its mtime is the temporary file's, before
        # the CLI's fsync): the moment every worker can see it.
        written = time.time() - (proxy.directory / "quarantine.yaml").stat().st_ctime
        applied = seconds_until_each(workers, by_tag, 403, added)
        for ref in refs:
            done = podman2.pull(ref, tls.cert_dir, creds=READER)
            assert refused_saying(done, f"{digest} is quarantined"), (ref, done.stderr)
        assert REASON in podman2.pull(refs[0], tls.cert_dir, creds=READER).stderr
        assert podman2.pull(f"{host}/team/app:ok", tls.cert_dir, creds=READER).returncode == 0

        removed = quarantine(proxy, "remove", digest)
        rewritten = time.time() - (proxy.directory / "quarantine.yaml").stat().st_ctime
        lifted = seconds_until_each(workers, by_tag, 200, removed)
        for ref in refs:
            done = podman2.pull(ref, tls.cert_dir, creds=READER)
            assert done.returncode == 0, (ref, done.stderr)
        # From the rename, an upper bound: a worker may apply it before the command returns.
        since_add, since_remove = (
            _ms([s + written for s in applied]),
            _ms([s + rewritten for s in lifted]),
        )
        print(f"\nquarantine applied by each of 2 workers after: {_ms(applied)}"
              f" (after the rename into place, at most: {since_add})"
              f"\nquarantine lifted by each of 2 workers after: {_ms(lifted)}"
              f" (after the rename into place, at most: {since_remove})")  # fmt: skip
        path, entry = proxy.directory / "quarantine.yaml", _entry(digest)
        for edit, status in (("written", 403), ("lifted", 200)):
            since = _rewrite(path, entry if status == 403 else "")
            print(f"a hand edit ({edit}, renamed into place) applied by each of 2 workers after:"
                  f" {_ms(seconds_until_each(workers, by_tag, status, since))}")  # fmt: skip
    finally:
        for kept in workers:
            kept.close()
    audited = (proxy.directory / "audit.log").read_text()
    assert f'"quarantine": {{"digest": "{digest}"' in audited and '"user": "reader"' in audited


def _entry(digest: str) -> str:
    return f"- digest: {digest}\n  reason: '{REASON}'\n  added: 2026-12-07T00:00:00Z\n"


def _rewrite(path: Path, text: str) -> float:
    """Write `path` whole and rename it into place, as an editor or a config tool does: the
    moment it was in place."""
    tmp = path.with_name(f".{path.name}.edit")
    tmp.write_text(text)
    tmp.rename(path)
    return time.monotonic()


def _ms(seconds: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f} ms" for s in seconds)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_with_redis_one_add_is_refused_by_two_replicas(
    tmp_path: Path, registry: Registry, tls: TlsFiles, podman: Podman, podman2: Podman,
    redis_server: RedisServer,
) -> None:  # fmt: skip
    state = f"state:\n  backend: redis\n  url: {redis_server.url}\n"
    stack = contextlib.ExitStack()
    replicas = [start_regproxy(tmp_path / name, registry.url, tls, SETUP + state)
                for name in ("one", "two")]  # fmt: skip
    try:
        one, two = replicas
        digest, _ = pushed_image(one.hostport, tls, podman, tmp_path)
        kept = [Kept(replica.port, tls) for replica in replicas]
        for k in kept:
            stack.callback(k.close)
        by_tag = "/v2/team/app/manifests/1"
        assert [k.status(by_tag) for k in kept] == [200, 200]
        added = quarantine(one, "add", digest, "--reason", REASON)
        applied = seconds_until_each(kept, by_tag, 403, added)
        done = podman2.pull(f"{two.hostport}/team/app:1", tls.cert_dir, creds=READER)
        assert refused_saying(done, f"{digest} is quarantined"), done.stderr
        assert not (two.directory / "quarantine.yaml").exists()  # two has it from Redis
        removed = quarantine(two, "remove", digest)  # lifted in Redis; one's file still has it
        lifted = seconds_until_each(kept[1:], by_tag, 200, removed)
        assert kept[0].status(by_tag) == 403
        quarantine(one, "remove", digest)
        seconds_until_each(kept[:1], by_tag, 200, time.monotonic())
        print(f"\nquarantine applied by each of 2 replicas (Redis) after: {_ms(applied)}")
        print(f"quarantine lifted by the replica without it in its file after: {_ms(lifted)}")
    finally:
        stack.close()
        for replica in replicas:
            replica.stop()


def test_a_layer_of_a_quarantined_image_is_refused_by_a_worker_that_never_read_it(
    tmp_path: Path, registry: Registry, tls: TlsFiles, podman: Podman, podman2: Podman
) -> None:
    """The image's layer, held by another repository (a derived image: same layer, its own
    config) but not the image: refused by a proxy started after the `add`, whose workers
    never read the image, for podman's pull of the derived image, a GET, HEAD and range of
    the layer and a cross-repository mount of it."""
    proxy = start_regproxy(tmp_path / "proxy", registry.url, tls, SETUP + "workers: 2\n")
    try:
        digest, _ = pushed_image(proxy.hostport, tls, podman, tmp_path)
        layer = _derived_image(proxy.hostport, tls, podman, digest, registry)
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "quarantine", "add", digest, "--reason", REASON,
             "-c", str(proxy.directory / "regproxy.yaml")],
            env=ENV, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        print(f"\n{done.stdout}")
    finally:
        proxy.stop()
    fresh = start_regproxy(tmp_path / "proxy", registry.url, tls, SETUP + "workers: 2\n")
    try:
        pulled = podman2.pull(f"{fresh.hostport}/other/derived:1", tls.cert_dir, creds=READER)
        assert refused_saying(pulled, f"reading blob {layer}"), pulled.stderr  # podman: 403
        assert "403 (Forbidden)" in pulled.stderr, pulled.stderr
        workers = one_per_worker(fresh, tls)
        blob = f"/v2/other/derived/blobs/{layer}"
        mount = f"/v2/elsewhere/blobs/uploads/?mount={layer}&from=other/derived"
        for kept in workers:
            assert kept.status(blob) == 403
            assert kept.status(blob, "HEAD") == 403
            assert kept.status(blob, Range="bytes=0-9") == 403
            assert kept.status(mount, "POST", Authorization=basic("testuserpush",
                               USERS["testuserpush"])) == 403  # fmt: skip
            kept.close()
        assert podman2.pull(f"{fresh.hostport}/team/app:ok", tls.cert_dir, creds=READER)\
            .returncode == 0  # fmt: skip
    finally:
        fresh.stop()


def _derived_image(host: str, tls: TlsFiles, podman: Podman, digest: str, registry: Registry
                   ) -> str:  # fmt: skip
    """other/derived:1, an image with team/app:1's layer and a config of its own, pushed (the
    registry then holds the layer in other/derived, without team/app:1's manifest): the
    layer's digest."""
    tar = make_rootfs_tar(tmp := podman.workdir / "derived.tar", b"quarantined content\n")
    podman.run("import", "--quiet", "--change", "LABEL derived=yes", str(tar),
               "localhost/derived:1", check=True)  # fmt: skip
    tmp.unlink()
    done = podman.push("localhost/derived:1", f"{host}/other/derived:1", tls.cert_dir,
                       creds=PUSHER)  # fmt: skip
    assert done.returncode == 0, done.stderr
    image, derived = (_manifest(registry, name, ref) for name, ref in
                      (("team/app", digest), ("other/derived", "1")))  # fmt: skip
    layers = [layer["digest"] for layer in image["layers"]]
    assert layers == [layer["digest"] for layer in derived["layers"]]  # the same layer
    assert image["config"]["digest"] != derived["config"]["digest"]
    return str(layers[0])


def _manifest(registry: Registry, name: str, reference: str) -> dict[str, Any]:
    """A manifest, straight from the registry."""
    request = urllib.request.Request(f"{registry.url}/v2/{name}/manifests/{reference}",
                                     headers={"Accept": ACCEPT})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return dict(json.loads(answer.read()))
