"""Machine identities end to end, with a real docker-registry behind the real `regproxy serve`:
podman and skopeo log in and push with a CI token from a local OIDC issuer (loopback HTTPS); a
robot made with `regproxy robot create` pushes with podman within its scopes and is revoked;
an upload started by one user cannot be continued, finished or cancelled by another."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.oidc_issuer import Issuer
from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles
from tests.conftest import SECRET, basic
from tests.e2e.conftest import ROOT, USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman, make_oci_layout

pytestmark = pytest.mark.e2e

ACL = """acl:
  - claims: {repository_owner: acme, ref: "refs/tags/v*"}
    repositories: ["apps/app"]
    actions: [pull, push]
  - users: [testuser]
    repositories: ["team/**"]
    actions: [pull, push]
  - groups: [pusher]
    actions: "*"
"""


@pytest.fixture
def proxy(
    tmp_path: Path, registry: Registry, tls: TlsFiles, issuer: Issuer
) -> Iterator[RegproxyProcess]:
    directory = tmp_path / "proxy"
    directory.mkdir()
    (directory / "secret").write_text(SECRET + "\n")
    extra = issuer.config() + ACL + "robots: robots.yaml\nsecret_file: secret\n"
    running = start_regproxy(directory, registry.url, tls, extra + "audit_log: audit.log\n")
    yield running
    running.stop()


def test_podman_and_skopeo_push_with_a_ci_token(
    proxy: RegproxyProcess, registry: Registry, tls: TlsFiles, issuer: Issuer,
    podman: Podman, skopeo: Skopeo, tmp_path: Path,
) -> None:  # fmt: skip
    host = proxy.hostport
    release = issuer.token()
    login = podman.login(host, "oidc", release, tls.cert_dir)
    assert login.returncode == 0, login.stderr
    podman.build_small_image("localhost/app:1")
    pushed = podman.push("localhost/app:1", f"{host}/apps/app:v1", tls.cert_dir)
    assert pushed.returncode == 0, pushed.stderr
    layout, _ = make_oci_layout(tmp_path / "layout", 4096, seed=7)
    copied = skopeo.copy(f"oci:{layout}:latest", f"docker://{host}/apps/app:v2",
                         creds=f"oidc:{release}", dest_cert_dir=tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    # A branch build of the same repository may not push; nor may a release elsewhere.
    branch = issuer.token(ref="refs/heads/main")
    refused = skopeo.copy(f"oci:{layout}:latest", f"docker://{host}/apps/app:v3",
                          creds=f"oidc:{branch}", dest_cert_dir=tls.cert_dir)  # fmt: skip
    assert refused.returncode != 0
    elsewhere = podman.push("localhost/app:1", f"{host}/apps/other:v1", tls.cert_dir)
    assert elsewhere.returncode != 0
    # Refused tokens: podman's login says no.
    now = int(time.time())
    expired = issuer.token(exp=now - 600, iat=now - 900, nbf=now - 900)
    assert podman.login(host, "oidc", expired, tls.cert_dir).returncode != 0
    assert podman.login(host, "oidc", issuer.token(aud="other"), tls.cert_dir).returncode != 0
    assert registry.tags("apps/app") == ["v1", "v2"] and "apps/other" not in registry.catalog()
    audit = (proxy.directory / "audit.log").read_text()
    assert '"user": "ci:acme/app"' in audit and f'"issuer": "{issuer.url}"' in audit


def robot_command(proxy: RegproxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(proxy.directory / "regproxy.yaml")
    return subprocess.run(
        [sys.executable, "-m", "proxy", "robot", *args, "-c", config],
        cwd=proxy.directory, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_a_robot_pushes_with_podman_within_its_scopes_until_revoked(
    proxy: RegproxyProcess, registry: Registry, tls: TlsFiles, podman: Podman
) -> None:
    scopes = ("--repositories", "apps/**", "--actions", "pull,push")
    made = robot_command(proxy, "create", "release", *scopes, "--expires", "7d",
                         "--owner", "testuserpush")  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    host = proxy.hostport
    deadline = time.monotonic() + 10
    while podman.login(host, "robot$release", secret, tls.cert_dir).returncode != 0:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.1)
    podman.build_small_image("localhost/robot:1")
    pushed = podman.push("localhost/robot:1", f"{host}/apps/tool:1", tls.cert_dir)
    assert pushed.returncode == 0, pushed.stderr
    outside = podman.push("localhost/robot:1", f"{host}/team/tool:1", tls.cert_dir)
    assert outside.returncode != 0  # its owner may, the robot's scope may not
    assert "403" in outside.stderr or "denied" in outside.stderr.lower(), outside.stderr
    assert registry.catalog() == ["apps/tool"]
    assert robot_command(proxy, "revoke", "release").returncode == 0
    deadline = time.monotonic() + 10
    while podman.login(host, "robot$release", secret, tls.cert_dir).returncode == 0:
        assert time.monotonic() < deadline, "the revoked robot still logs in"
        time.sleep(0.1)
    again = podman.push("localhost/robot:1", f"{host}/apps/tool:2", tls.cert_dir)
    assert again.returncode != 0 and registry.tags("apps/tool") == ["1"]


def request(proxy: RegproxyProcess, tls: TlsFiles, method: str, target: str, user: str,
            body: bytes = b"") -> tuple[int, str]:  # fmt: skip
    """One request through the proxy as `user`: status and Location (path and query)."""
    connection = http.client.HTTPSConnection(
        "localhost", proxy.port, context=tls.client_context(), timeout=30
    )
    try:
        headers = {"Authorization": basic(user, USERS[user]), "Content-Length": str(len(body))}
        if body:
            headers["Content-Type"] = "application/octet-stream"
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        location = response.getheader("Location") or ""
        return response.status, location.removeprefix(f"https://localhost:{proxy.port}")
    finally:
        connection.close()


def test_an_upload_belongs_to_whoever_started_it(
    proxy: RegproxyProcess, registry: Registry, tls: TlsFiles
) -> None:
    """testuser and testuserpush may both push to team/app; testuser starts an upload."""
    first, second = b"first half, ", b"second half"
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
    status, location = request(proxy, tls, "POST", "/v2/team/app/blobs/uploads/", "testuser")
    assert status == 202 and "_regproxy=" in location
    status, location = request(proxy, tls, "PATCH", location, "testuser", first)
    assert status == 202, location
    # Another identity with push rights on team/app: refused on every method.
    thief = "testuserpush"
    assert request(proxy, tls, "PATCH", location, thief, b"injected")[0] == 403
    assert request(proxy, tls, "PUT", f"{location}&digest={digest}", thief, second)[0] == 403
    assert request(proxy, tls, "GET", location, thief)[0] == 403
    assert request(proxy, tls, "DELETE", location, thief)[0] == 403
    # The upload is intact: its owner sees the offset it left and finishes it.
    status, _ = request(proxy, tls, "GET", location, "testuser")
    assert status == 204
    status, done = request(proxy, tls, "PUT", f"{location}&digest={digest}", "testuser", second)
    assert status == 201, done
    assert digest in registry.stored_blobs()
    stored = registry.root / f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    assert stored.read_bytes() == first + second
