"""The OCI 1.1 pieces Debian's docker-registry 2.8 has, through the real regproxy: manifests with
`artifactType` and `subject` stored and served byte for byte (2.8 sends no `OCI-Subject` and
has no referrers API, so clients fall back to the referrers tag schema, which works too), and
chunked uploads with their `Range` answers. tests/test_oci11.py covers the rest against a fake
upstream."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl

import pytest

from devtools.registry import Registry
from devtools.tls import TlsFiles
from tests.e2e.conftest import USERS, RegproxyProcess

pytestmark = pytest.mark.e2e

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SBOM = "application/vnd.example.sbom.v1+json"
Reply = tuple[int, http.client.HTTPMessage, bytes]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "size": len(data), "digest": sha256(data)}


class Client:
    """Raw HTTPS requests to regproxy as the pushing user."""

    def __init__(self, regproxy: RegproxyProcess, tls: TlsFiles) -> None:
        self.port = regproxy.port
        self.context = ssl.create_default_context(cafile=str(tls.ca_cert))
        token = base64.b64encode(f"testuserpush:{USERS['testuserpush']}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}

    @property
    def origin(self) -> str:
        return f"https://localhost:{self.port}"

    def __call__(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        connection = http.client.HTTPSConnection(
            "localhost", self.port, context=self.context, timeout=30
        )
        try:
            sent = body if method in ("POST", "PUT", "PATCH") else None
            connection.request(method, target, body=sent, headers=self.auth | (headers or {}))
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def relative(self, location: str) -> str:
        assert location.startswith(self.origin + "/v2/"), location  # rewritten to the proxy
        return location.removeprefix(self.origin)

    def push_blob(self, repository: str, data: bytes) -> None:
        """POST then PUT (2.8 has no single-POST upload)."""
        status, headers, _ = self("POST", f"/v2/{repository}/blobs/uploads/")
        assert status == 202
        target = self.relative(headers["Location"])
        target += ("&" if "?" in target else "?") + f"digest={sha256(data)}"
        octets = {"Content-Type": "application/octet-stream"}
        assert self("PUT", target, data, octets)[0] == 201


def test_artifact_and_subject_manifests_byte_for_byte(
    registry: Registry, regproxy: RegproxyProcess, tls: TlsFiles
) -> None:
    client = Client(regproxy, tls)
    repo = "library/app"
    config, layer = b"{}", b"an sbom\n"
    for blob in (config, layer):
        client.push_blob(repo, blob)
    image = json.dumps(
        {"schemaVersion": 2, "mediaType": MANIFEST, "config": descriptor(EMPTY, config),
         "layers": []}, separators=(",", ":"),
    ).encode()  # fmt: skip
    status, _, _ = client("PUT", f"/v2/{repo}/manifests/v1", image, {"Content-Type": MANIFEST})
    assert status == 201
    # Written the way a client might: indentation, key order and escapes a re-encoding changes.
    fields = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": SBOM,
        "config": descriptor(EMPTY, config),
        "layers": [descriptor(SBOM, layer)],
        "subject": descriptor(MANIFEST, image),
    }
    lines = [f'   "{key}": {json.dumps(value)},' for key, value in fields.items()]
    annotations = '   "annotations": {"org.example.caf\\u00e9": "\\u2713"}'
    artifact = "\n".join(["{", *lines, annotations, "}"]).encode()
    target = f"/v2/{repo}/manifests/{sha256(artifact)}"
    status, headers, _ = client("PUT", target, artifact, {"Content-Type": MANIFEST})
    assert status == 201
    assert headers["Docker-Content-Digest"] == sha256(artifact)
    assert headers["Location"] == client.origin + target
    assert "OCI-Subject" not in headers  # 2.8 does not process `subject`; nothing is invented
    for method in ("GET", "HEAD"):
        status, headers, body = client(method, target, headers={"Accept": MANIFEST})
        assert (status, headers["Content-Type"]) == (200, MANIFEST)
        assert headers["Docker-Content-Digest"] == sha256(artifact)
        assert int(headers["Content-Length"]) == len(artifact)
        assert body == (artifact if method == "GET" else b"")

    # No referrers API in 2.8: the same 404 as directly, so clients use the tag schema.
    referrers = f"/v2/{repo}/referrers/{sha256(image)}"
    assert client("GET", referrers)[0] == 404
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": INDEX,
         "manifests": [descriptor(MANIFEST, artifact) | {"artifactType": SBOM}]}
    ).encode()  # fmt: skip
    fallback = f"/v2/{repo}/manifests/sha256-{hashlib.sha256(image).hexdigest()}"
    assert client("PUT", fallback, index, {"Content-Type": INDEX})[0] == 201
    status, headers, body = client("GET", fallback, headers={"Accept": INDEX})
    assert (status, headers["Content-Type"], body) == (200, INDEX, index)
    assert registry.manifest_digest(repo, sha256(artifact)) == sha256(artifact)


def test_chunked_upload_with_range_answers(
    registry: Registry, regproxy: RegproxyProcess, tls: TlsFiles
) -> None:
    client = Client(regproxy, tls)
    chunks = [b"x" * 70_000, b"y" * 30_000]
    data = b"".join(chunks)
    status, headers, _ = client("POST", "/v2/library/chunked/blobs/uploads/")
    assert status == 202
    location = client.relative(headers["Location"])
    assert location.startswith("/v2/library/chunked/blobs/uploads/")
    assert headers["Range"] == "0-0"
    offset = 0
    for chunk in chunks:
        content = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        }
        status, headers, _ = client("PATCH", location, chunk, content)
        offset += len(chunk)
        assert (status, headers["Range"]) == (202, f"0-{offset - 1}")
        location = client.relative(headers["Location"])
        status, headers, body = client("GET", location)
        assert (status, headers["Range"], body) == (204, f"0-{offset - 1}", b"")
    separator = "&" if "?" in location else "?"
    target = f"{location}{separator}digest={sha256(data)}"
    status, headers, _ = client("PUT", target)
    assert (status, headers["Docker-Content-Digest"]) == (201, sha256(data))
    status, _, body = client("GET", f"/v2/library/chunked/blobs/{sha256(data)}")
    assert (status, body) == (200, data)
