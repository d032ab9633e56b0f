"""The Apache recipe's own checks, with real clients: podman and skopeo through regproxy to a
real docker-registry (../shared/seeds/004: login, push as pusher, pull as pull-only user,
pull-only user cannot push)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles
from tests.e2e.conftest import USERS, RegproxyProcess
from tests.e2e.harness import Podman, make_oci_layout

PUSHER = f"testuserpush:{USERS['testuserpush']}"
PULLER = f"testuser:{USERS['testuser']}"
READER = f"reader:{USERS['reader']}"


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll until `check()` holds; the bound only stops a broken run from hanging."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_login_push_pull_like_the_recipe(
    regproxy: RegproxyProcess,
    registry: Registry,
    tls: TlsFiles,
    podman: Podman,
    podman2: Podman,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    host = regproxy.hostport
    assert podman.login(host, "testuserpush", USERS["testuserpush"], tls.cert_dir).returncode == 0
    wrong = podman.login(host, "testuserpush", "nope", tls.cert_dir)
    assert wrong.returncode != 0
    assert "invalid username/password" in wrong.stderr

    # A small image with podman, a larger one with skopeo, both as the pusher.
    podman.build_small_image("localhost/small:1")
    pushed = podman.push("localhost/small:1", f"{host}/test/small:1", tls.cert_dir,
                         digestfile=tmp_path / "small.digest")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    small_digest = (tmp_path / "small.digest").read_text().strip()
    layout, big_digest = make_oci_layout(tmp_path / "layout", 24 * 1024 * 1024, seed=7)
    copied = skopeo.copy(f"oci:{layout}:latest", f"docker://{host}/test/big:1",
                         creds=PUSHER, dest_cert_dir=tls.cert_dir)  # fmt: skip
    assert copied.returncode == 0, copied.stderr

    # What the registry holds is what was pushed.
    assert registry.manifest_digest("test/small", "1") == small_digest
    assert registry.manifest_digest("test/big", "1") == big_digest

    # The pull-only user pulls both back through the proxy, digests equal.
    assert podman2.login(host, "testuser", USERS["testuser"], tls.cert_dir).returncode == 0
    for repo, digest in (("test/small", small_digest), ("test/big", big_digest)):
        pulled = podman2.pull(f"{host}/{repo}:1", tls.cert_dir)
        assert pulled.returncode == 0, pulled.stderr
        assert podman2.image_digest(f"{host}/{repo}:1") == digest
    assert skopeo.manifest_digest(f"docker://{host}/test/big:1", PULLER, tls.cert_dir) == big_digest

    log = regproxy.access_log()
    assert '"PUT /v2/test/small/manifests/1 HTTP/1.1" 201' in log
    assert " testuserpush " in log and " testuser " in log


def test_pull_only_users_change_nothing(
    regproxy: RegproxyProcess,
    registry: Registry,
    tls: TlsFiles,
    podman: Podman,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    host = regproxy.hostport
    podman.build_small_image("localhost/base:1")
    pushed = podman.push("localhost/base:1", f"{host}/test/app:1", tls.cert_dir, creds=PUSHER)
    assert pushed.returncode == 0, pushed.stderr
    before = registry.snapshot()
    blobs_before = registry.stored_blobs()

    podman.build_small_image("localhost/evil:1", content=b"not allowed\n")
    for creds in (PULLER, READER):  # valid users outside the push group
        for dest in (f"{host}/test/new:1", f"{host}/test/app:2", f"{host}/test/app:1"):
            refused = podman.push("localhost/evil:1", dest, tls.cert_dir, creds=creds)
            assert refused.returncode != 0
            assert "403" in refused.stderr or "denied" in refused.stderr.lower(), refused.stderr
        deleted = skopeo.run("delete", "--creds", creds, "--cert-dir", str(tls.cert_dir),
                             f"docker://{host}/test/app:1")  # fmt: skip
        assert deleted.returncode != 0

    assert registry.snapshot() == before
    assert registry.stored_blobs() == blobs_before
    assert "POST" not in _upstream_requests(registry, after_push=True)


def _upstream_requests(registry: Registry, after_push: bool) -> str:
    """Upstream access-log lines after the last successful manifest PUT."""
    lines = registry.log_text().splitlines()
    last_put = max((i for i, line in enumerate(lines) if "PUT /v2/" in line), default=-1)
    return "\n".join(lines[last_put + 1 :] if after_push else lines)


def _login_ok(podman: Podman, host: str, user: str, password: str, tls: TlsFiles) -> bool:
    return podman.login(host, user, password, tls.cert_dir).returncode == 0


def test_htpasswd_and_group_edits_take_effect_without_restart(
    regproxy: RegproxyProcess, tls: TlsFiles, podman: Podman
) -> None:
    host, pid = regproxy.hostport, regproxy.process.pid
    htpasswd = str(regproxy.htpasswd)
    assert not _login_ok(podman, host, "newbie", "fresh-pw", tls)

    # Add a user with Apache's own tool (it writes a temp file and renames it).
    subprocess.run(["htpasswd", "-bB", htpasswd, "newbie", "fresh-pw"], check=True)
    assert eventually(lambda: _login_ok(podman, host, "newbie", "fresh-pw", tls))

    # Change a password: the old one stops working, the new one works.
    subprocess.run(["htpasswd", "-bm", htpasswd, "testuser", "changed-pw"], check=True)
    assert eventually(lambda: _login_ok(podman, host, "testuser", "changed-pw", tls))
    assert not _login_ok(podman, host, "testuser", USERS["testuser"], tls)

    # Add newbie to the push group by editing the file in place.
    podman.build_small_image("localhost/n:1")
    refused = podman.push("localhost/n:1", f"{host}/newbie/app:1", tls.cert_dir,
                          creds="newbie:fresh-pw")  # fmt: skip
    assert refused.returncode != 0
    with regproxy.groups.open("a") as groups:
        groups.write("pusher: newbie\n")
    assert eventually(
        lambda: (
            podman.push(
                "localhost/n:1", f"{host}/newbie/app:1", tls.cert_dir, creds="newbie:fresh-pw"
            ).returncode
            == 0
        )
    )

    # A broken edit keeps the last good users: binary garbage, then the file deleted.
    regproxy.htpasswd.write_bytes(b"\x00\xff\xfe garbage")
    assert eventually(lambda: "not UTF-8 text" in regproxy.log())
    assert _login_ok(podman, host, "newbie", "fresh-pw", tls)
    regproxy.htpasswd.unlink()
    assert eventually(lambda: "No such file or directory" in regproxy.log())
    assert _login_ok(podman, host, "testuserpush", USERS["testuserpush"], tls)
    assert f"{regproxy.htpasswd}:1: not UTF-8 text" in regproxy.log()
    assert regproxy.process.poll() is None and regproxy.process.pid == pid
