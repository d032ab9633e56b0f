"""Tag policy with real clients and a real registry, under the shipped conf/acl/release-tags.yaml:
group `release` pushes v* tags, which are immutable; group `ci` pushes sha-* tags only; nobody
deletes what a v* tag names. podman and skopeo print the proxy's refusal to the user."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles
from tests.e2e.conftest import ROOT, USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman

pytestmark = pytest.mark.e2e

ACL = ROOT / "conf" / "acl" / "release-tags.yaml"
GROUPS = "release: testuserpush\nci: reader\nadmin: testuser\n"
RELEASE = f"testuserpush:{USERS['testuserpush']}"
CI = f"reader:{USERS['reader']}"
ADMIN = f"testuser:{USERS['testuser']}"


@pytest.fixture
def tagged(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[RegproxyProcess]:
    running = start_regproxy(tmp_path / "proxy", registry.url, tls, f"acl: {ACL}\n", groups=GROUPS)
    yield running
    running.stop()


def test_release_tags_with_podman_and_skopeo(
    tagged: RegproxyProcess,
    registry: Registry,
    tls: TlsFiles,
    podman: Podman,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    host, certs = tagged.hostport, tls.cert_dir
    podman.build_small_image("localhost/app:one", content=b"release one\n")
    podman.build_small_image("localhost/app:two", content=b"something else\n")

    # Push v1, then try to make v1 name other content: refused, and podman says why.
    first = podman.push("localhost/app:one", f"{host}/apps/web:v1", certs, creds=RELEASE,
                        digestfile=tmp_path / "v1.digest")  # fmt: skip
    assert first.returncode == 0, first.stderr
    v1 = (tmp_path / "v1.digest").read_text().strip()
    assert registry.manifest_digest("apps/web", "v1") == v1
    moved = podman.push("localhost/app:two", f"{host}/apps/web:v1", certs, creds=RELEASE)
    assert moved.returncode != 0
    assert "tag v1 is immutable (rule release-tags.yaml:28)" in moved.stderr, moved.stderr
    assert f"apps/web:v1 is {v1}, this push is sha256:" in moved.stderr
    assert registry.manifest_digest("apps/web", "v1") == v1

    # The same image again (a retried push): accepted, nothing changes.
    again = podman.push("localhost/app:one", f"{host}/apps/web:v1", certs, creds=RELEASE,
                        digestfile=tmp_path / "again.digest")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.digest").read_text().strip() == v1

    # Deleting it is refused even for admin: skopeo resolves the tag and deletes by digest.
    deleted = skopeo.run("delete", "--creds", ADMIN, "--cert-dir", str(certs),
                         f"docker://{host}/apps/web:v1")  # fmt: skip
    assert deleted.returncode != 0
    assert f"tag v1 is immutable (rule release-tags.yaml:28): it names {v1}" in deleted.stderr, (
        deleted.stderr
    )
    assert registry.manifest_digest("apps/web", "v1") == v1
    assert registry.manifest_digest("apps/web", v1) == v1

    # ci publishes sha-* tags, never v* tags.
    sha = podman.push("localhost/app:two", f"{host}/apps/web:sha-4e2a", certs, creds=CI)
    assert sha.returncode == 0, sha.stderr
    release = podman.push("localhost/app:two", f"{host}/apps/web:v2", certs, creds=CI)
    assert release.returncode != 0
    assert "push access denied" in release.stderr, release.stderr
    assert registry.tags("apps/web") == ["sha-4e2a", "v1"]

    log = tagged.access_log()
    assert '"PUT /v2/apps/web/manifests/v1 HTTP/1.1" 403' in log
    assert '"PUT /v2/apps/web/manifests/v2 HTTP/1.1" 403' in log
    assert f'"DELETE /v2/apps/web/manifests/{v1} HTTP/1.1" 403' in log
