"""End-to-end harness: a real docker-registry on 127.0.0.1 and real clients (podman, skopeo,
buildah, oras-py, the docker CLI with a private dockerd), each with private state."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.net import free_port

DEFAULT_TIMEOUT = 120.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
Auth = tuple[str, str]
Proc = subprocess.CompletedProcess[str]


class CommandError(RuntimeError):
    """A harness subprocess failed or timed out."""


def https_status(url: str, authorization: str, ca_cert: Path, timeout: float) -> int:
    """The status of a GET of `url` with this Authorization header, trusting `ca_cert`."""
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
    check: bool = False,
) -> Proc:
    """Run argv in its own process group (SIGKILLed on timeout -> CommandError).

    Output is decoded UTF-8/surrogateescape without newline translation, so
    `stdout.encode("utf-8", "surrogateescape")` gives back the exact bytes.
    """
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        start_new_session=True,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(None if input is None else input.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        msg = err.decode(errors="replace")
        raise CommandError(f"timeout after {timeout}s: {list(argv)}\n{msg}") from None
    text = [b.decode("utf-8", "surrogateescape") for b in (out, err)]
    result = subprocess.CompletedProcess(list(argv), proc.returncode, *text)
    if check and result.returncode != 0:
        raise CommandError(f"exit {result.returncode}: {list(argv)}\n{result.stderr}")
    return result


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a server started in its own session by PID; SIGKILL its process group after
    timeout."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _flags(opts: Mapping[str, object]) -> list[str]:
    """["--flag", "value", ...] for the options whose value is set."""
    return [arg for flag, value in opts.items() if value for arg in (flag, str(value))]


def _clean_env(**extra: str) -> dict[str, str]:
    """os.environ minus proxy, REGISTRY_* (docker-registry config overrides!), CONTAINERS_*."""
    drop = ("REGISTRY_", "CONTAINERS_", "_CONTAINERS_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(drop)
    }
    return env | extra


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and a server cert for localhost, 127.0.0.1 and ::1."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    cert_dir: Path  # contains ONLY ca.crt: the value for podman/skopeo --cert-dir

    def client_context(self) -> ssl.SSLContext:
        """Client context trusting only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def make_tls(dir: Path, *names: str) -> TlsFiles:
    """Write ca.crt, server.crt (chain), server.key and certs.d/ca.crt into dir; the server
    certificate is for localhost, 127.0.0.1, ::1 and `names`."""
    dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1", *names)
    files = TlsFiles(dir / "ca.crt", dir / "server.crt", dir / "server.key", dir / "certs.d")
    ca.cert_pem.write_to_path(str(files.ca_cert))
    files.server_cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.server_key))
    files.cert_dir.mkdir(exist_ok=True)
    shutil.copy(files.ca_cert, files.cert_dir / "ca.crt")
    return files


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """Write a bcrypt htpasswd file (the only hash docker-registry accepts) via htpasswd -Bbn."""
    lines = [
        run(["htpasswd", "-Bbn", user, pw], check=True, timeout=30).stdout.strip()
        for user, pw in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Registry:
    """A real `docker-registry serve` subprocess on 127.0.0.1, started by the constructor."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: TlsFiles | None = None,
        htpasswd: Path | None = None,
        token: Mapping[str, str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.workdir, self.tls, self.htpasswd, self.token = workdir, tls, htpasswd, token
        self.root = workdir / "storage"
        self.log = workdir / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._start(start_timeout)

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.hostport}"

    def _config(self) -> dict[str, Any]:
        http: dict[str, Any] = {"addr": self.hostport, "secret": secrets.token_hex(16)}
        if self.tls:
            http["tls"] = {
                "certificate": str(self.tls.server_cert),
                "key": str(self.tls.server_key),
            }
        storage = {"filesystem": {"rootdirectory": str(self.root)}, "delete": {"enabled": True}}
        cfg = {"version": "0.1", "log": {"level": "warn"}, "http": http, "storage": storage}
        if self.htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": "regproxy-test", "path": str(self.htpasswd)}}
        if self.token:  # realm, service, issuer, rootcertbundle
            cfg["auth"] = {"token": dict(self.token)}
        return cfg

    def _start(self, timeout: float) -> None:
        ready = (200, 401) if self.htpasswd or self.token else (200,)
        for attempt in range(3):  # someone may grab the free port before the registry binds it
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(json.dumps(self._config(), indent=1))  # JSON is valid YAML
            with self.log.open("wb") as log:
                self._proc = subprocess.Popen(
                    ["docker-registry", "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_clean_env(),
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if (rc := self._proc.poll()) is not None:
                    if "address already in use" in self.log_text() and attempt < 2:
                        break
                    raise RuntimeError(f"docker-registry exited {rc}:\n{self.log_text()}")
                try:
                    if self._request("GET", "/v2/", timeout=1)[0] in ready:
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            else:
                self.stop()
                raise RuntimeError(f"docker-registry not ready in {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        """Registry output so far: error lines plus one access-log line per request."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the registry by PID, SIGKILL after timeout."""
        _terminate(self._proc, timeout)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _request(
        self,
        method: str,
        path: str,
        *,
        auth: Auth | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any, bytes]:
        """Direct request to the registry, ignoring env proxies; returns (status, headers, body)."""
        req = urllib.request.Request(self.url + path, method=method, headers=dict(headers or {}))
        if auth:
            token = base64.b64encode(":".join(auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.tls:
            handlers.append(urllib.request.HTTPSHandler(context=self.tls.client_context()))
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers, err.read()

    def _get_json(self, path: str, auth: Auth | None) -> Any:
        status, _, body = self._request("GET", path, auth=auth)
        if status == 404:
            return {}
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def catalog(self, auth: Auth | None = None) -> list[str]:
        """All repositories upstream (up to 1000: docker-registry 2.8 rejects larger n)."""
        return sorted(self._get_json("/v2/_catalog?n=1000", auth).get("repositories") or [])

    def tags(self, repo: str, auth: Auth | None = None) -> list[str]:
        """Tags of repo upstream ([] if the repository is unknown)."""
        return sorted(self._get_json(f"/v2/{repo}/tags/list", auth).get("tags") or [])

    def manifest_digest(self, repo: str, ref: str, auth: Auth | None = None) -> str | None:
        """Docker-Content-Digest of repo:ref (tag or digest) via HEAD, None if absent."""
        status, headers, _ = self._request(
            "HEAD", f"/v2/{repo}/manifests/{ref}", auth=auth, headers={"Accept": MANIFEST_ACCEPT}
        )
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"HEAD manifest {repo}:{ref}: HTTP {status}")
        return str(headers["Docker-Content-Digest"])

    def snapshot(self, auth: Auth | None = None) -> dict[str, dict[str, str | None]]:
        """{repo: {tag: digest}} of everything upstream: compare to prove nothing changed."""
        return {
            repo: {tag: self.manifest_digest(repo, tag, auth) for tag in self.tags(repo, auth)}
            for repo in self.catalog(auth)
        }

    def stored_blobs(self) -> set[str]:
        """Digests of all blobs in the storage dir, including ones no manifest references."""
        blobs = self.root / "docker/registry/v2/blobs/sha256"
        return {f"sha256:{data.parent.name}" for data in blobs.glob("*/*/data")}

    def stored_files(self) -> set[str]:
        """Every file in the storage dir (blobs, links, tags, upload sessions), as relative
        paths: equal before and after something proves it left nothing behind."""
        return {str(path.relative_to(self.root)) for path in self.root.rglob("*") if path.is_file()}


def _private_home(home: Path, **extra: str) -> dict[str, str]:
    """Env giving containers/image tools a private HOME (config, policy, auth, blob-info cache).

    ~/.config/containers/registries.conf (unlike CONTAINERS_REGISTRIES_CONF) also hides the
    system registries.conf.d; a fake non-zero _CONTAINERS_ROOTLESS_UID moves root's blob-info
    cache from the shared /var/lib/containers/cache to ~/.local/share/containers/cache.
    """
    conf = home / ".config/containers"
    conf.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    (conf / "registries.conf").write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
    )
    (conf / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (home / "auth.json").write_text('{"auths": {}}')  # podman --authfile fails if it is missing
    return _clean_env(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home / "run"),
        TMPDIR=str(home / "tmp"),
        REGISTRY_AUTH_FILE=str(home / "auth.json"),
        _CONTAINERS_ROOTLESS_UID="4242",
        **extra,
    )


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
        self.env = _private_home(
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
        self.base = [self.program, *storage, "--storage-driver", "vfs", *self._global_flags()]

    def _global_flags(self) -> list[str]:
        return []

    def run(self, *args: str, input: str | None = None, check: bool = False) -> Proc:
        """`<program> <private global flags> args...`."""
        argv = [*self.base, *args]
        return run(argv, env=self.env, timeout=self.timeout, input=input, check=check)

    def _remote(self, cert_dir: Path | None, creds: str | None) -> list[str]:
        return _flags({"--authfile": self.authfile, "--cert-dir": cert_dir, "--creds": creds})

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
        extra = _flags({"--digestfile": digestfile, "--format": format})
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

    def _global_flags(self) -> list[str]:
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
            args = ["import", "--quiet", *_flags({"--arch": arch}), str(tar_path), ref]
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


class Skopeo:
    """skopeo with a private HOME: blob-info cache, auth file, registries.conf and policy.

    The cache lives as long as the instance: copying a blob again to another repo of the same
    registry becomes a cross-repo mount (HEAD in the old repo, POST ?mount=&from=). Use a fresh
    instance to force real uploads.
    """

    def __init__(self, workdir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.workdir, self.timeout = workdir, timeout
        self.env = _private_home(workdir)
        self.base = ["skopeo", "--tmpdir", str(workdir / "tmp")]

    def run(self, *args: str) -> Proc:
        """`skopeo <private global flags> args...`; never raises on failure."""
        return run([*self.base, *args], env=self.env, timeout=self.timeout)

    def copy(
        self,
        src: str,
        dest: str,
        *,
        creds: str | None = None,
        src_creds: str | None = None,
        dest_cert_dir: Path | None = None,
        src_cert_dir: Path | None = None,
        extra: Sequence[str] = (),
    ) -> Proc:
        """`skopeo copy [extra] src dest` (transport-prefixed refs); creds (USER:PASS) for dest."""
        opts = {
            "--dest-creds": creds,
            "--src-creds": src_creds,
            "--dest-cert-dir": dest_cert_dir,
            "--src-cert-dir": src_cert_dir,
        }
        return self.run("copy", *_flags(opts), *extra, src, dest)

    def inspect_raw(self, ref: str, creds: str | None = None, cert_dir: Path | None = None) -> Proc:
        """`skopeo inspect --raw ref`: the raw top-level manifest on stdout."""
        flags = _flags({"--creds": creds, "--cert-dir": cert_dir})
        return self.run("inspect", "--raw", *flags, ref)

    def manifest_digest(
        self, ref: str, creds: str | None = None, cert_dir: Path | None = None
    ) -> str:
        """sha256 of the raw top-level manifest at ref; raises CommandError on failure."""
        proc = self.inspect_raw(ref, creds, cert_dir)
        if proc.returncode != 0:
            raise CommandError(f"skopeo inspect {ref}: exit {proc.returncode}\n{proc.stderr}")
        raw = proc.stdout.encode("utf-8", "surrogateescape")
        return f"sha256:{hashlib.sha256(raw).hexdigest()}"


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
        self.env = _clean_env(
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
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(PATH=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"),
                start_new_session=True,
            )
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
        _terminate(self._proc, timeout)

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
        self.env = _clean_env(HOME=str(workdir / "home"))

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
