"""A real `docker-registry serve` on 127.0.0.1, and the htpasswd files it reads."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.net import free_port
from devtools.processes import clean_env, run, start, stop
from devtools.tls import TlsFiles

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
            self._proc = start(["docker-registry", "serve", str(config)], self.log, env=clean_env())
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
        if self._proc is not None:
            stop(self._proc, timeout)

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
