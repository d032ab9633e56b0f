"""ACL rules with real clients and a real registry: namespaces, anonymous pull of public/*,
a cross-repository mount from a repository the user may not read, and the filtered catalog."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman, make_oci_layout

ACL = """acl:
  - users: [testuser]
    repositories: ["${user}/**"]
    actions: [pull, push, delete]
  - anonymous: true
    repositories: ["public/**"]
    actions: [pull]
  - groups: [pusher]
    actions: "*"
  - repositories: ["public/**", "library/**"]
    actions: [pull]
"""
PUSHER = f"testuserpush:{USERS['testuserpush']}"
OWNER = f"testuser:{USERS['testuser']}"


@pytest.fixture
def guarded(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[RegproxyProcess]:
    running = start_regproxy(tmp_path / "proxy", registry.url, tls, ACL)
    yield running
    running.stop()


def test_namespaces_and_anonymous_public_pull(
    guarded: RegproxyProcess,
    registry: Registry,
    tls: TlsFiles,
    podman: Podman,
    podman2: Podman,
    skopeo: Skopeo,
) -> None:
    host = guarded.hostport
    podman.build_small_image("localhost/img:1")
    own = podman.push("localhost/img:1", f"{host}/testuser/app:1", tls.cert_dir, creds=OWNER)
    assert own.returncode == 0, own.stderr
    for dest in (f"{host}/testuserpush/app:1", f"{host}/library/app:1", f"{host}/public/x:1"):
        refused = podman.push("localhost/img:1", dest, tls.cert_dir, creds=OWNER)
        assert refused.returncode != 0
        assert "403" in refused.stderr or "denied" in refused.stderr.lower(), refused.stderr
    published = podman.push("localhost/img:1", f"{host}/public/base:1", tls.cert_dir, creds=PUSHER)
    assert published.returncode == 0, published.stderr
    assert sorted(registry.catalog()) == ["public/base", "testuser/app"]

    # No credentials at all: public/* pulls, the rest asks for a login.
    assert podman2.pull(f"{host}/public/base:1", tls.cert_dir).returncode == 0
    private = podman2.pull(f"{host}/testuser/app:1", tls.cert_dir)
    assert private.returncode != 0
    anonymous = skopeo.run("inspect", "--raw", "--no-creds", "--cert-dir", str(tls.cert_dir),
                           f"docker://{host}/public/base:1")  # fmt: skip
    assert anonymous.returncode == 0, anonymous.stderr

    # The catalog shows each caller only what they may pull.
    assert catalog(guarded, tls, None) == ["public/base"]
    assert catalog(guarded, tls, ("reader", USERS["reader"])) == ["public/base"]
    assert catalog(guarded, tls, ("testuser", USERS["testuser"])) == [
        "public/base",
        "testuser/app",
    ]


def call(
    proxy: RegproxyProcess, tls: TlsFiles, method: str, path: str, auth: tuple[str, str] | None
) -> tuple[int, bytes]:
    """One raw request through the proxy (no client smarts)."""
    request = urllib.request.Request(f"https://{proxy.hostport}{path}", method=method)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def catalog(proxy: RegproxyProcess, tls: TlsFiles, auth: tuple[str, str] | None) -> list[str]:
    status, body = call(proxy, tls, "GET", "/v2/_catalog", auth)
    assert status == 200
    return list(json.loads(body)["repositories"])


def test_mount_from_an_unreadable_repository_leaks_nothing(
    guarded: RegproxyProcess, registry: Registry, tls: TlsFiles, skopeo: Skopeo, tmp_path: Path
) -> None:
    host = guarded.hostport
    layout, _ = make_oci_layout(tmp_path / "layout", 256 * 1024, seed=11)
    secret = skopeo.copy(f"oci:{layout}:latest", f"docker://{host}/secret/base:1",
                         creds=PUSHER, dest_cert_dir=tls.cert_dir)  # fmt: skip
    assert secret.returncode == 0, secret.stderr
    layer = next(b for b in registry.stored_blobs() if registry_blob_size(registry, b) > 100_000)
    owner = ("testuser", USERS["testuser"])
    assert call(guarded, tls, "HEAD", f"/v2/secret/base/blobs/{layer}", owner)[0] == 403
    # A raw mount request (a client that does not check first): the mount is dropped and the
    # registry starts an ordinary upload (202), so the layer does not appear in testuser/app.
    mount = f"/v2/testuser/app/blobs/uploads/?mount={layer}&from=secret/base"
    assert call(guarded, tls, "POST", mount, owner)[0] == 202
    assert "mount from secret/base dropped for testuser" in guarded.log()
    assert call(guarded, tls, "HEAD", f"/v2/testuser/app/blobs/{layer}", owner)[0] == 404
    # The pusher may read secret/base: its mount is kept and succeeds (201 Created).
    pusher = ("testuserpush", USERS["testuserpush"])
    kept = f"/v2/public/copy/blobs/uploads/?mount={layer}&from=secret/base"
    assert call(guarded, tls, "POST", kept, pusher)[0] == 201
    assert call(guarded, tls, "HEAD", f"/v2/public/copy/blobs/{layer}", pusher)[0] == 200


def registry_blob_size(registry: Registry, digest: str) -> int:
    data = registry.root / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    return data.stat().st_size
