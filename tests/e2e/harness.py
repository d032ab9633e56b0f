"""End-to-end harness: real clients (podman, buildah, oras-py, the docker CLI with a private
dockerd), each with private state; the registry and skopeo are in `devtools`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.processes import DEFAULT_TIMEOUT, Proc, clean_env, run, start, stop
from devtools.registry import OCI_MANIFEST
from devtools.skopeo import flags, private_home


def _rmtree(path: Path) -> None:
    """rm -rf path after lazily unmounting anything below it (defensive: vfs mounts nothing)."""
    if not path.exists():
        return
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted(points, reverse=True):
        if point == prefix or point.startswith(prefix + "/"):
            run(["umount", "-l", point], timeout=30)
    shutil.rmtree(path, ignore_errors=True)


def make_rootfs_tar(path: Path, content: bytes = b"hello from regproxy e2e\n") -> Path:
    """Write a tiny root file system tar (hello.txt holding `content`, etc/os-release)."""
    with tarfile.open(path, "w") as tar:
        for name, data in (("hello.txt", content), ("etc/os-release", b"ID=regproxy-test\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


class _StorageTool:
    """A containers/storage tool run as root with private vfs storage, config, auth file and
    blob-info cache; subclasses name the program and its own global flags."""

    program = ""

    def __init__(self, workdir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.workdir, self.timeout = workdir, timeout
        self.home = workdir / "home"
        self.authfile = self.home / "auth.json"
        self.runroot = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))  # short: socket paths
        self.graphroot = workdir / "root"
        self.env = private_home(
            self.home,
            CONTAINERS_CONF=str(self.home / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.home / "storage.conf"),
        )
        (self.home / "containers.conf").write_text("")
        (self.home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.graphroot}"\n'
            f'runroot = "{self.runroot}"\n'
        )
        storage = ["--root", str(self.graphroot), "--runroot", str(self.runroot)]
        self.base = [self.program, *storage, "--storage-driver", "vfs", *self._globalflags()]

    def _globalflags(self) -> list[str]:
        return []

    def run(self, *args: str, input: str | None = None, check: bool = False) -> Proc:
        """`<program> <private global flags> args...`."""
        argv = [*self.base, *args]
        return run(argv, env=self.env, timeout=self.timeout, input=input, check=check)

    def _remote(self, cert_dir: Path | None, creds: str | None) -> list[str]:
        return flags({"--authfile": self.authfile, "--cert-dir": cert_dir, "--creds": creds})

    def login(self, hostport: str, user: str, password: str, cert_dir: Path | None = None) -> Proc:
        """`login` (password on stdin); never raises on failure."""
        args = ["login", *self._remote(cert_dir, None), "-u", user, "--password-stdin", hostport]
        return self.run(*args, input=password)

    def logout(self, hostport: str) -> Proc:
        return self.run("logout", "--authfile", str(self.authfile), hostport)

    def push(
        self,
        local_ref: str,
        dest_ref: str,
        cert_dir: Path | None = None,
        *,
        creds: str | None = None,
        digestfile: Path | None = None,
        format: str | None = None,
    ) -> Proc:
        """Push local_ref to docker://dest_ref; digestfile receives the pushed manifest digest;
        format: oci or v2s2 (default: the tool's choice)."""
        extra = flags({"--digestfile": digestfile, "--format": format})
        remote = self._remote(cert_dir, creds)
        return self.run("push", *remote, *extra, local_ref, f"docker://{dest_ref}")

    def pull(self, ref: str, cert_dir: Path | None = None, *, creds: str | None = None) -> Proc:
        return self.run("pull", *self._remote(cert_dir, creds), f"docker://{ref}")

    def tag(self, ref: str, new_ref: str) -> None:
        self.run("tag", ref, new_ref, check=True)

    def rmi(self, ref: str) -> Proc:
        return self.run("rmi", "--force", ref)

    def cleanup(self) -> None:
        """Remove storage, private home and runroot (vfs layers are plain directories)."""
        for path in (self.graphroot, self.home, self.runroot):
            _rmtree(path)


class Podman(_StorageTool):
    """Rootful podman with private vfs storage, config, auth file and blob-info cache."""

    program = "podman"

    def _globalflags(self) -> list[str]:
        return [
            "--tmpdir",
            str(self.runroot / "libpod"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network-config-dir",
            str(self.home / "networks"),
        ]

    def inspect(self, ref: str) -> dict[str, Any]:
        """`podman image inspect` of one local image."""
        return dict(json.loads(self.run("image", "inspect", ref, check=True).stdout)[0])

    def image_digest(self, ref: str) -> str:
        """Manifest digest recorded for a local image (that of the pulled/pushed manifest)."""
        return str(self.inspect(ref)["Digest"])

    def build_small_image(
        self, ref: str, content: bytes = b"hello from regproxy e2e\n", *, arch: str | None = None
    ) -> str:
        """Create ref offline by `podman import [--arch ARCH]` of a tiny tar; returns its id."""
        tar_path = make_rootfs_tar(self.workdir / f"rootfs-{secrets.token_hex(4)}.tar", content)
        try:
            args = ["import", "--quiet", *flags({"--arch": arch}), str(tar_path), ref]
            out = self.run(*args, check=True).stdout
        finally:
            tar_path.unlink()
        return out.strip().splitlines()[-1]


class Buildah(_StorageTool):
    """Rootful buildah with private vfs storage, config, auth file and blob-info cache."""

    program = "buildah"

    def build(self, context: Path, ref: str) -> Proc:
        """`buildah build -t ref context` (its Containerfile); offline as long as it is FROM
        scratch and has no RUN."""
        return self.run("build", "--quiet", "--tag", ref, str(context))

    def inspect(self, ref: str) -> dict[str, Any]:
        """`buildah inspect --type image` of one local image."""
        return dict(json.loads(self.run("inspect", "--type", "image", ref, check=True).stdout))


def _put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_oci_layout(dir: Path, size_bytes: int, seed: int, tag: str = "latest") -> tuple[Path, str]:
    """Write a deterministic single-layer OCI layout (gzipped tar of size_bytes random bytes).

    Built in memory (~3x size_bytes). Returns (layout_path, manifest_digest); reference it
    as `oci:<layout_path>:<tag>`.
    """
    (dir / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"data-{seed}.bin")
        info.size, info.mode = size_bytes, 0o644
        tar.addfile(info, io.BytesIO(random.Random(seed).randbytes(size_bytes)))
    layer = _put_blob(dir, gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))
    diff_id = f"sha256:{hashlib.sha256(buf.getvalue()).hexdigest()}"
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_put_blob(dir, json.dumps(config, sort_keys=True).encode()),
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    desc = _put_blob(dir, json.dumps(manifest, sort_keys=True).encode())
    ref_name = {"org.opencontainers.image.ref.name": tag}
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, **desc, "annotations": ref_name}],
    }
    (dir / "index.json").write_text(json.dumps(index))
    (dir / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dir, str(desc["digest"])


DOCKER_CLI = "/usr/bin/docker"  # Debian's docker.io, the CLI of the dockerd it ships


class Docker:
    """A private dockerd (vfs, no iptables, no bridge; own data root, exec root, pidfile, socket
    and containerd namespaces) and the docker CLI talking to it (private config and HOME).

    dockerd runs in a mount namespace of its own in which /etc/hosts (`hosts`: name -> loopback
    address) and /etc/docker (certs.d, key.json) are private directories of this instance:
    nothing on the host changes. dockerd skips certificate checks (and falls back to plain HTTP)
    for every registry whose name resolves into 127.0.0.0/8, so a name resolving to ::1 is what
    makes it verify the proxy's certificate against /etc/docker/certs.d/HOST:PORT/ca.crt.
    """

    def __init__(
        self,
        workdir: Path,
        hosts: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        start_timeout: float = 60.0,
    ) -> None:
        self.workdir, self.timeout = workdir, timeout
        self.etc = workdir / "etc-docker"  # dockerd's /etc/docker
        self.exec_root = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))  # short: socket paths
        self.socket = self.exec_root / "docker.sock"
        self.log = workdir / "dockerd.log"
        (self.etc / "certs.d").mkdir(parents=True)
        (workdir / "home").mkdir()
        lines = ["127.0.0.1 localhost", *(f"{addr} {name}" for name, addr in hosts.items())]
        (workdir / "hosts").write_text("\n".join(lines) + "\n")
        self.env = clean_env(
            DOCKER_HOST=f"unix://{self.socket}",
            DOCKER_CONFIG=str(workdir / "config"),
            HOME=str(workdir / "home"),
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._start(start_timeout)

    def _start(self, timeout: float) -> None:
        namespace = f"regproxy-e2e-{secrets.token_hex(4)}"
        dockerd = [
            "dockerd",
            "--storage-driver=vfs",
            "--iptables=false",
            "--bridge=none",
            f"--data-root={self.workdir / 'data'}",
            f"--exec-root={self.exec_root / 'exec'}",
            f"--pidfile={self.exec_root / 'docker.pid'}",
            f"--host=unix://{self.socket}",
            f"--containerd-namespace={namespace}",
            f"--containerd-plugins-namespace={namespace}-plugins",
        ]
        private = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/docker && shift 2'
        argv = ["unshare", "--mount", "--propagation", "private", "--"]
        argv += ["sh", "-c", f'{private} && exec "$@"', "sh"]
        argv += [str(self.workdir / "hosts"), str(self.etc), *dockerd]
        path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
        self._proc = start(argv, self.log, env=clean_env(PATH=path))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (rc := self._proc.poll()) is not None:
                raise RuntimeError(f"dockerd exited {rc}:\n{self.log_text()}")
            if self._ping():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dockerd not ready in {timeout}s:\n{self.log_text()}")

    def _ping(self) -> bool:
        """True once dockerd answers GET /_ping on its socket."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.0 200")
        except OSError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def trust(self, hostport: str, ca_cert: Path) -> None:
        """Put ca_cert where dockerd looks for hostport's CA: /etc/docker/certs.d/HOSTPORT/."""
        (self.etc / "certs.d" / hostport).mkdir(exist_ok=True)
        shutil.copy(ca_cert, self.etc / "certs.d" / hostport / "ca.crt")

    def run(self, *args: str, input: str | None = None, check: bool = False) -> Proc:
        """`docker args...` against this dockerd; never raises unless check."""
        argv = [DOCKER_CLI, *args]
        return run(argv, env=self.env, timeout=self.timeout, input=input, check=check)

    def login(self, hostport: str, user: str, password: str, *, stdin: bool = True) -> Proc:
        """`docker login` with --password-stdin, or with -p (stdin=False)."""
        if stdin:
            return self.run("login", "-u", user, "--password-stdin", hostport, input=password)
        return self.run("login", "-u", user, "-p", password, hostport)

    def import_tar(self, tar_path: Path, ref: str) -> str:
        """`docker import` of a root file system tar as ref; returns the image id."""
        return self.run("import", str(tar_path), ref, check=True).stdout.strip()

    def repo_digests(self, ref: str) -> list[str]:
        """RepoDigests (NAME@DIGEST) of a local image."""
        out = self.run("image", "inspect", "--format", "{{json .RepoDigests}}", ref, check=True)
        return list(json.loads(out.stdout))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM dockerd by PID (it stops the containerd it started), SIGKILL after timeout."""
        if self._proc is not None:
            stop(self._proc, timeout)

    def cleanup(self) -> None:
        """Stop dockerd, then remove its data root (vfs layers are plain directories)."""
        self.stop()
        for path in (self.workdir / "data", self.exec_root):
            _rmtree(path)


class Oras:
    """oras-py, the ORAS Python SDK, driven by tests/e2e/oras_client.py in a subprocess with a
    private HOME (~/.docker/config.json holds what login writes), trusting only ca_cert."""

    def __init__(self, workdir: Path, ca_cert: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ca_cert, self.timeout = ca_cert, timeout
        (workdir / "home").mkdir(parents=True)
        self.env = clean_env(HOME=str(workdir / "home"))

    def run(self, *args: str, input: str | None = None) -> Proc:
        """`oras_client.py args...`; never raises on failure."""
        driver = Path(__file__).with_name("oras_client.py")
        argv = [sys.executable, str(driver), "--ca", str(self.ca_cert), *args]
        return run(argv, env=self.env, timeout=self.timeout, input=input)

    def login(self, hostport: str, user: str, password: str) -> Proc:
        return self.run("login", hostport, user, input=password)

    def push(self, ref: str, file: Path, media_type: str, artifact_type: str) -> Proc:
        """Push file as the one layer of an artifact; stdout: the manifest digest."""
        return self.run("push", ref, f"{file}:{media_type}", "--artifact-type", artifact_type)

    def pull(self, ref: str, outdir: Path) -> Proc:
        """Pull ref's layers into outdir; stdout: the manifest as JSON."""
        return self.run("pull", ref, str(outdir))
