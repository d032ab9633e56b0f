"""What `docker build -f compose/Dockerfile .` sends: a real build (podman, FROM scratch, so no
base image is pulled) of a checkout holding the secrets and junk an operator's checkout has,
with the repository's .dockerignore."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Podman

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
JUNK = (
    "compose/auth/domain.key",  # the recipe's folder, next to the compose file
    "compose/auth/httpd.htpasswd",
    "compose/data/docker/registry/v2/blobs/x",
    "auth/domain.key",
    "certs/server.key",
    "conf/htpasswd",
    "data/registry.log",
    ".venv/bin/python",
    "proxy/__pycache__/cli.cpython-311.pyc",
    ".git/config",
    ".mypy_cache/x.json",
    "bench/results/latest.json",
)


@pytest.fixture
def image(tmp_path: Path) -> Iterator[tuple[Podman, str]]:
    podman = Podman(tmp_path / "podman")
    yield podman, "localhost/context:1"
    podman.cleanup()


def test_build_context_holds_only_what_the_image_needs(
    tmp_path: Path, image: tuple[Podman, str]
) -> None:
    podman, ref = image
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in [*tracked, ".dockerignore"]:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    for name in JUNK:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("secret or junk\n")
    (tmp_path / "Containerfile").write_text("FROM scratch\nCOPY . /context/\n")
    built = podman.run("build", "-f", str(tmp_path / "Containerfile"), "-t", ref, str(checkout))
    assert built.returncode == 0, built.stderr
    mounted = podman.run("image", "mount", ref, check=True).stdout.strip()
    try:
        root = Path(mounted) / "context"
        sent = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    finally:
        podman.run("image", "unmount", ref)
    needed = {"README.md", "pyproject.toml", "compose/entrypoint.sh", "compose/healthcheck.py"}
    package = {name for name in tracked if name.startswith("proxy/")}
    assert sent == needed | package
    # Everything compose/Dockerfile copies is in it.
    for line in (ROOT / "compose" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert any(name == source or name.startswith(f"{source}/") for name in sent)
