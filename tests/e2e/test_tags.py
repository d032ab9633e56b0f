"""Tag policy with real clients and a real registry, under the shipped conf/acl/release-tags.yaml:
group `release` pushes v* tags, which are immutable; group `ci` pushes sha-* tags only; nobody
deletes what a v* tag names. podman and skopeo print the proxy's refusal to the user."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devtools.registry import OCI_MANIFEST, Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles
from tests.e2e.conftest import ROOT, USERS, RegproxyProcess, start_regproxy
from tests.e2e.fleet import until
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

    # An access line is written once its answer is sent: podman may have read the last
    # refusal, and exited, before the proxy wrote its line.
    refused = '"PUT /v2/apps/web/manifests/v2 HTTP/1.1" 403'
    until(lambda: refused in tagged.access_log(), "the refused v2 push in the access log")
    log = tagged.access_log()
    assert '"PUT /v2/apps/web/manifests/v1 HTTP/1.1" 403' in log
    assert f'"DELETE /v2/apps/web/manifests/{v1} HTTP/1.1" 403' in log


OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _push_blob(registry: Registry, repository: str, data: bytes) -> dict[str, object]:
    """A blob pushed straight to the registry (a monolithic upload); its descriptor."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = registry._request("POST", f"/v2/{repository}/blobs/uploads/")
    assert status == 202
    location = urlsplit(headers["Location"])
    query = f"{location.query}&digest={digest}" if location.query else f"digest={digest}"
    put = urllib.request.Request(
        f"{registry.url}{location.path}?{query}", data=data, method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(put, timeout=10) as resp:
        assert resp.status == 201
    return {"mediaType": "application/octet-stream", "digest": digest, "size": len(data)}


def _push_manifest(registry: Registry, repository: str, reference: str, document: object,
                   media_type: str) -> dict[str, object]:  # fmt: skip
    """A manifest pushed straight to the registry; its descriptor (with the true type)."""
    body = json.dumps(document).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    put = urllib.request.Request(
        f"{registry.url}/v2/{repository}/manifests/{reference or digest}", data=body,
        method="PUT", headers={"Content-Type": media_type},
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(put, timeout=10) as resp:
        assert resp.status == 201
    return {"mediaType": media_type, "digest": digest, "size": len(body)}


def test_a_mislabelled_nested_index_cannot_hide_what_an_immutable_tag_holds(
    tagged: RegproxyProcess, registry: Registry, tls: TlsFiles
) -> None:
    """#23 finding 3: the outer index of apps/web:v1 lists an index I2 (holding the leaf L)
    under an image manifest's media type, which the registry accepts; deleting L by digest
    would break v1's image, so it is refused: what a manifest holds is read from its bytes."""
    config = _push_blob(registry, "apps/web", b"{}")
    layer = _push_blob(registry, "apps/web", b"layer bytes")
    leaf = _push_manifest(registry, "apps/web", "", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {**config, "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [{**layer, "mediaType": "application/vnd.oci.image.layer.v1.tar"}],
    }, OCI_MANIFEST)  # fmt: skip
    inner = _push_manifest(registry, "apps/web", "", {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [leaf],
    }, OCI_INDEX)  # fmt: skip
    lie = {**inner, "mediaType": OCI_MANIFEST}  # the descriptor says: an image, nothing inside
    _push_manifest(registry, "apps/web", "v1", {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [lie],
    }, OCI_INDEX)  # fmt: skip
    delete = urllib.request.Request(
        f"https://{tagged.hostport}/v2/apps/web/manifests/{leaf['digest']}", method="DELETE",
        headers={"Authorization": "Basic " + base64.b64encode(ADMIN.encode()).decode()},
    )  # fmt: skip
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls.client_context())
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(delete, timeout=30)
    assert refused.value.code == 403
    message = json.loads(refused.value.read())["errors"][0]["message"]
    assert message == (
        f"tag v1 is immutable (rule release-tags.yaml:28): its index holds {leaf['digest']}"
    )
    assert registry.manifest_digest("apps/web", str(leaf["digest"])) == leaf["digest"]
