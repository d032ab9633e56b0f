"""End-to-end fixtures: a real docker-registry, the real `regproxy serve` as a subprocess,
and real podman/skopeo clients, each with its own port and temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.net import free_port
from devtools.processes import kill_group, start, stop
from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles, make_tls, wait_for_tls
from tests.conftest import one_worker_unless
from tests.e2e.harness import Podman

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
USERS = {"testuser": "testpassword", "testuserpush": "test:password:push", "reader": "reader-pw"}
GROUPS = "pusher: testuserpush\nreaders: reader\n"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in tests/e2e is an end-to-end test (`-m "not e2e"` leaves them out)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@dataclass
class RegproxyProcess:
    """`python -m proxy serve` in a subprocess, stopped by PID."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def hostport(self) -> str:
        return f"localhost:{self.port}"

    @property
    def htpasswd(self) -> Path:
        return self.directory / "htpasswd"

    @property
    def groups(self) -> Path:
        return self.directory / "groups"

    def log(self) -> str:
        return (self.directory / "regproxy.err").read_text(errors="replace")

    def access_log(self) -> str:
        return (self.directory / "regproxy.out").read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM by PID (it drains, its workers too), SIGKILL after `timeout`; the status."""
        return stop(self.process, timeout)


def start_regproxy(
    directory: Path,
    upstream: str,
    tls: TlsFiles,
    extra: str = "",
    port: int | None = None,
    host: str = "127.0.0.1",
    groups: str = GROUPS,
) -> RegproxyProcess:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["htpasswd", "-cbB", str(directory / "htpasswd"), "testuser", USERS["testuser"]],
        check=True,
        capture_output=True,
    )
    for user in ("testuserpush", "reader"):
        # apr1 (htpasswd's default) and bcrypt side by side, as real files have them.
        flag = "-bm" if user == "reader" else "-bB"
        subprocess.run(
            ["htpasswd", flag, str(directory / "htpasswd"), user, USERS[user]],
            check=True,
            capture_output=True,
        )
    (directory / "groups").write_text(groups)
    port = port or free_port()
    config = directory / "regproxy.yaml"
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config.write_text(
        f"listen: '{listen}'\nupstream: {upstream}\n"
        f"htpasswd: htpasswd\ngroups: groups\n"
        f"tls:\n  cert: {tls.server_cert}\n  key: {tls.server_key}\n" + one_worker_unless(extra)
    )
    process = start(
        [sys.executable, "-m", "proxy", "serve", "-c", str(config)],
        directory / "regproxy.out",
        directory / "regproxy.err",
        # Its workers' shared files in its own directory: a replica killed outright
        # leaves them behind.
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(directory)},
        cwd=directory,
    )
    try:
        wait_for_tls(port, tls.client_context(), process, 20, host)
    except RuntimeError:
        kill_group(process)
        process.wait()
        raise RuntimeError((directory / "regproxy.err").read_text()) from None
    return RegproxyProcess(process, port, directory)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def regproxy(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[RegproxyProcess]:
    running = start_regproxy(tmp_path / "proxy", registry.url, tls)
    yield running
    running.stop()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    client = Podman(tmp_path / "podman1")
    yield client
    client.cleanup()


@pytest.fixture
def podman2(tmp_path: Path) -> Iterator[Podman]:
    client = Podman(tmp_path / "podman2")
    yield client
    client.cleanup()


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo")
