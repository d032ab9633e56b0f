"""Client matrix (issue 12): real clients through the real `regproxy serve` to a real
docker-registry, each as a push user and as a pull-only user under the recipe's policy (group
`pusher` pushes and deletes, every valid user pulls). The push user's push round-trips
byte-exact (the manifest digest the client reports is the one the registry stores and the one
the pull-only user gets back); the pull-only user's push is refused with the proxy's message
and leaves no file behind in the registry's storage.

One registry and one proxy serve the whole module (each test has its own repositories);
docker gets a second proxy on ::1 in front of the same registry (see harness.Docker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.processes import Proc
from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles, make_tls
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Buildah, Docker, Oras, Podman, make_oci_layout, make_rootfs_tar

pytestmark = pytest.mark.e2e

PUSH_USER, PULL_USER = "testuserpush", "testuser"  # in group pusher / in no group
PUSHER = f"{PUSH_USER}:{USERS[PUSH_USER]}"
PULLER = f"{PULL_USER}:{USERS[PULL_USER]}"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"  # in v2s2 manifests
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
INDEXES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
DOCKER_NAME = "regproxy-e2e.test"  # ::1 in dockerd's private /etc/hosts, nowhere else
ARTIFACT_TYPE = "application/vnd.regproxy.e2e.report.v1"
LAYER_TYPE = "application/vnd.regproxy.e2e.report.layer.v1+json"


@dataclass(frozen=True)
class Site:
    """The module's registry and the proxy in front of it (clients call it localhost:PORT)."""

    registry: Registry
    proxy: RegproxyProcess
    tls: TlsFiles

    @property
    def host(self) -> str:
        return self.proxy.hostport

    @property
    def cert_dir(self) -> Path:
        return self.tls.cert_dir


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("clients")
    tls = make_tls(workdir / "tls", DOCKER_NAME)
    with Registry(workdir / "registry") as registry:
        proxy = start_regproxy(workdir / "proxy", registry.url, tls)
        try:
            yield Site(registry, proxy, tls)
        finally:
            proxy.stop()


@pytest.fixture(scope="module")
def docker(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Docker, str]]:
    """A private dockerd, and the HOST:PORT under which it reaches a second proxy on [::1]."""
    workdir = tmp_path_factory.mktemp("docker")
    with contextlib.ExitStack() as stack:
        proxy = start_regproxy(workdir / "proxy", site.registry.url, site.tls, host="::1")
        stack.callback(proxy.stop)
        client = Docker(workdir / "dockerd", {DOCKER_NAME: "::1"})
        stack.callback(client.cleanup)
        yield client, f"{DOCKER_NAME}:{proxy.port}"


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    client = Buildah(tmp_path / "buildah")
    yield client
    client.cleanup()


@contextlib.contextmanager
def leaves_nothing(registry: Registry) -> Iterator[None]:
    """Assert that the block changes no file in the registry's storage: no blob, link, tag,
    manifest or upload session."""
    before = registry.stored_files()
    yield
    assert registry.stored_files() == before


def assert_refused(proc: Proc, message: str = "push access denied") -> None:
    """The client failed and shows the proxy's reason."""
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr


def fetch_manifest(site: Site, skopeo: Skopeo, ref: str) -> tuple[str, dict[str, Any]]:
    """(digest, parsed JSON) of ref's raw manifest, fetched through the proxy as the pull-only
    user."""
    proc = skopeo.inspect_raw(f"docker://{ref}", PULLER, site.cert_dir)
    assert proc.returncode == 0, proc.stderr
    raw = proc.stdout.encode("utf-8", "surrogateescape")
    return f"sha256:{hashlib.sha256(raw).hexdigest()}", json.loads(raw)


@pytest.mark.parametrize(
    ("format", "config_type"), [("v2s2", DOCKER_CONFIG), ("oci", OCI_CONFIG)], ids=["v2s2", "oci"]
)
def test_podman_push_and_pull(
    site: Site,
    podman: Podman,
    podman2: Podman,
    skopeo: Skopeo,
    tmp_path: Path,
    format: str,
    config_type: str,
) -> None:
    repo = f"test/podman-{format}"
    ref = f"{site.host}/{repo}:1"
    podman.build_small_image("localhost/pm:1", f"podman {format}\n".encode())
    pushed = podman.push("localhost/pm:1", ref, site.cert_dir, creds=PUSHER,
                         digestfile=tmp_path / "digest", format=format)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    digest = (tmp_path / "digest").read_text().strip()
    assert site.registry.manifest_digest(repo, "1") == digest
    raw_digest, manifest = fetch_manifest(site, skopeo, ref)
    assert (raw_digest, manifest["config"]["mediaType"]) == (digest, config_type)

    pulled = podman2.pull(ref, site.cert_dir, creds=PULLER)
    assert pulled.returncode == 0, pulled.stderr
    assert podman2.image_digest(ref) == digest

    podman2.build_small_image("localhost/denied:1", b"the pull-only user's image\n")
    with leaves_nothing(site.registry):
        for dest in (ref, f"{site.host}/{repo}:2", f"{site.host}/test/podman-denied:1"):
            refused = podman2.push("localhost/denied:1", dest, site.cert_dir, creds=PULLER,
                                   format=format)  # fmt: skip
            assert_refused(refused)


def test_podman_multi_arch_index(
    site: Site, podman: Podman, podman2: Podman, skopeo: Skopeo, tmp_path: Path
) -> None:
    repo = "test/podman-multiarch"
    ref = f"{site.host}/{repo}:1"
    podman.run("manifest", "create", "localhost/multi:1", check=True)
    for arch in ("amd64", "arm64"):
        podman.build_small_image(f"localhost/multi-{arch}:1", f"{arch}\n".encode(), arch=arch)
        image = f"containers-storage:localhost/multi-{arch}:1"
        podman.run("manifest", "add", "localhost/multi:1", image, check=True)
    remote = ["--cert-dir", str(site.cert_dir)]
    pushed = podman.run("manifest", "push", "--all", *remote, "--creds", PUSHER,
                        "--digestfile", str(tmp_path / "digest"),
                        "localhost/multi:1", f"docker://{ref}")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    digest = (tmp_path / "digest").read_text().strip()
    assert site.registry.manifest_digest(repo, "1") == digest
    raw_digest, index = fetch_manifest(site, skopeo, ref)
    assert raw_digest == digest
    assert index["mediaType"] in INDEXES
    children = {entry["platform"]["architecture"]: entry["digest"] for entry in index["manifests"]}
    assert sorted(children) == ["amd64", "arm64"]
    for child in children.values():
        assert site.registry.manifest_digest(repo, child) == child

    pulled = podman2.run("pull", "--arch", "arm64", *remote, "--creds", PULLER, f"docker://{ref}")
    assert pulled.returncode == 0, pulled.stderr
    image = podman2.inspect(ref)
    assert image["Architecture"] == "arm64"
    assert f"{site.host}/{repo}@{children['arm64']}" in image["RepoDigests"]

    with leaves_nothing(site.registry):
        for dest in (f"{site.host}/{repo}:2", f"{site.host}/test/podman-multiarch-denied:1"):
            refused = podman.run("manifest", "push", "--all", *remote, "--creds", PULLER,
                                 "localhost/multi:1", f"docker://{dest}")  # fmt: skip
            assert_refused(refused)


def _blobs(layout: Path) -> dict[str, bytes]:
    return {blob.name: blob.read_bytes() for blob in (layout / "blobs/sha256").iterdir()}


def _layout_digest(layout: Path) -> str:
    return str(json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])


def _push_layout(site: Site, skopeo: Skopeo, layout: Path, seed: int, repo: str) -> str:
    """Write a small OCI layout, copy it to repo:1 as the push user; its manifest digest."""
    layout, digest = make_oci_layout(layout, 64 * 1024, seed=seed)
    copied = skopeo.copy(f"oci:{layout}:latest", f"docker://{site.host}/{repo}:1", creds=PUSHER,
                         dest_cert_dir=site.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert site.registry.manifest_digest(repo, "1") == digest
    return digest


def test_skopeo_copy(site: Site, skopeo: Skopeo, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = _push_layout(site, skopeo, layout, 12, "test/skopeo")
    ref = f"{site.host}/test/skopeo:1"

    puller = Skopeo(tmp_path / "puller")  # its own blob-info cache
    pulled = puller.copy(f"docker://{ref}", f"oci:{tmp_path / 'pulled'}:1", src_creds=PULLER,
                         src_cert_dir=site.cert_dir)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert _layout_digest(tmp_path / "pulled") == digest
    assert _blobs(tmp_path / "pulled") == _blobs(layout)

    other, _ = make_oci_layout(tmp_path / "other", 64 * 1024, seed=13)
    with leaves_nothing(site.registry):
        for dest in (ref, f"{site.host}/test/skopeo-denied:1"):
            refused = puller.copy(f"oci:{other}:latest", f"docker://{dest}", creds=PULLER,
                                  dest_cert_dir=site.cert_dir)  # fmt: skip
            assert_refused(refused)


def test_skopeo_sync(site: Site, skopeo: Skopeo, tmp_path: Path) -> None:
    digest = _push_layout(site, skopeo, tmp_path / "layout", 14, "test/sync")
    source = f"{site.host}/test/sync"

    def sync(creds: str, dest_type: str, dest: str) -> Proc:
        certs = ["--src-cert-dir", str(site.cert_dir), "--dest-cert-dir", str(site.cert_dir)]
        return skopeo.run("sync", "--src", "docker", "--dest", dest_type, *certs,
                          "--src-creds", creds, "--dest-creds", creds, source, dest)  # fmt: skip

    synced = sync(PUSHER, "docker", f"{site.host}/mirror")
    assert synced.returncode == 0, synced.stderr
    assert site.registry.manifest_digest("mirror/sync", "1") == digest

    pulled = sync(PULLER, "dir", str(tmp_path / "synced"))
    assert pulled.returncode == 0, pulled.stderr
    [manifest] = (tmp_path / "synced").glob("**/manifest.json")
    assert f"sha256:{hashlib.sha256(manifest.read_bytes()).hexdigest()}" == digest

    with leaves_nothing(site.registry):
        assert_refused(sync(PULLER, "docker", f"{site.host}/mirror-denied"))


def test_skopeo_delete(site: Site, skopeo: Skopeo, tmp_path: Path) -> None:
    digest = _push_layout(site, skopeo, tmp_path / "layout", 15, "test/delete")
    ref = f"docker://{site.host}/test/delete:1"

    def delete(creds: str) -> Proc:
        return skopeo.run("delete", "--creds", creds, "--cert-dir", str(site.cert_dir), ref)

    with leaves_nothing(site.registry):
        assert_refused(delete(PULLER), "delete access denied")
    deleted = delete(PUSHER)
    assert deleted.returncode == 0, deleted.stderr
    assert site.registry.manifest_digest("test/delete", digest) is None
    assert site.registry.tags("test/delete") == []


def _build_context(directory: Path, content: bytes) -> Path:
    """A build context: FROM scratch, ADD of a local root file system tar, no RUN."""
    directory.mkdir()
    make_rootfs_tar(directory / "rootfs.tar", content)
    (directory / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n")
    return directory


def test_buildah_build_push_pull(site: Site, buildah: Buildah, tmp_path: Path) -> None:
    repo = "test/buildah"
    ref = f"{site.host}/{repo}:1"
    built = buildah.build(_build_context(tmp_path / "context", b"built by buildah\n"), "bh:1")
    assert built.returncode == 0, built.stderr
    login = buildah.login(site.host, PUSH_USER, USERS[PUSH_USER], site.cert_dir)
    assert login.returncode == 0, login.stderr
    pushed = buildah.push("localhost/bh:1", ref, site.cert_dir, digestfile=tmp_path / "digest")
    assert pushed.returncode == 0, pushed.stderr
    digest = (tmp_path / "digest").read_text().strip()
    assert site.registry.manifest_digest(repo, "1") == digest

    puller = Buildah(tmp_path / "puller")  # its own storage: every blob is downloaded
    try:
        pulled = puller.pull(ref, site.cert_dir, creds=PULLER)
        assert pulled.returncode == 0, pulled.stderr
        assert puller.inspect(ref)["FromImageDigest"] == digest

        context = _build_context(tmp_path / "denied", b"the pull-only user's build\n")
        assert puller.build(context, "denied:1").returncode == 0
        with leaves_nothing(site.registry):
            for dest in (f"{site.host}/{repo}:2", f"{site.host}/test/buildah-denied:1"):
                refused = puller.push("localhost/denied:1", dest, site.cert_dir, creds=PULLER)
                assert_refused(refused)
    finally:
        puller.cleanup()


def test_oras_artifact(site: Site, skopeo: Skopeo, tmp_path: Path) -> None:
    oras = Oras(tmp_path / "oras", site.tls.ca_cert)
    report = tmp_path / "report.json"
    report.write_bytes(json.dumps({"findings": [], "seed": 16}).encode())
    ref = f"{site.host}/test/oras:1"
    assert oras.login(site.host, PUSH_USER, USERS[PUSH_USER]).returncode == 0
    pushed = oras.push(ref, report, LAYER_TYPE, ARTIFACT_TYPE)
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.strip()
    assert site.registry.manifest_digest("test/oras", "1") == digest
    assert fetch_manifest(site, skopeo, ref)[0] == digest

    assert oras.login(site.host, PULL_USER, USERS[PULL_USER]).returncode == 0
    pulled = oras.pull(ref, tmp_path / "pulled")
    assert pulled.returncode == 0, pulled.stderr
    manifest = json.loads(pulled.stdout)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_TYPE]
    assert (tmp_path / "pulled" / report.name).read_bytes() == report.read_bytes()

    other = tmp_path / "other.json"
    other.write_bytes(b'{"findings": ["not yours to push"]}')
    with leaves_nothing(site.registry):
        for dest in (ref, f"{site.host}/test/oras-denied:1"):
            assert_refused(oras.push(dest, other, LAYER_TYPE, ARTIFACT_TYPE))


def test_docker_login_push_pull(site: Site, docker: tuple[Docker, str], tmp_path: Path) -> None:
    client, host = docker
    repo = "test/docker"
    ref = f"{host}/{repo}:1"
    untrusted = client.login(host, PUSH_USER, USERS[PUSH_USER])
    assert untrusted.returncode != 0
    assert "certificate signed by unknown authority" in untrusted.stderr
    client.trust(host, site.tls.ca_cert)
    wrong = client.login(host, PUSH_USER, "wrong password")
    assert wrong.returncode != 0
    assert "401 Unauthorized" in wrong.stderr

    login = client.login(host, PUSH_USER, USERS[PUSH_USER])  # --password-stdin
    assert login.returncode == 0, login.stderr
    client.import_tar(make_rootfs_tar(tmp_path / "rootfs.tar", b"imported by docker\n"), ref)
    pushed = client.run("push", ref)
    assert pushed.returncode == 0, pushed.stderr
    match = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed.stdout)
    assert match, pushed.stdout
    digest = match[1]
    assert site.registry.manifest_digest(repo, "1") == digest

    login = client.login(host, PULL_USER, USERS[PULL_USER], stdin=False)  # -p PASSWORD
    assert login.returncode == 0, login.stderr
    client.run("rmi", ref, check=True)
    pulled = client.run("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert client.repo_digests(ref) == [f"{host}/{repo}@{digest}"]

    denied = make_rootfs_tar(tmp_path / "denied.tar", b"the pull-only user's image\n")
    with leaves_nothing(site.registry):
        for dest in (f"{host}/{repo}:2", f"{host}/test/docker-denied:1"):
            client.import_tar(denied, dest)
            assert_refused(client.run("push", dest))
