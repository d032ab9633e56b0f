"""`regproxy serve` imports what its configuration needs: with a plain htpasswd setup, no
LDAP, JOSE, Redis, Prometheus or importer code in any of its processes. Python's own import
log (PYTHONPROFILEIMPORTTIME) names every module each process imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FakeUpstream, TlsPair, serving, write_setup

# Each one is imported where the configuration asks for it (README: "What each backend adds").
NOT_FOR_HTPASSWD = ("ldap3", "joserfc", "redis", "prometheus_client", "cryptography", "passlib")
NOT_FOR_SERVE = (
    "proxy.importer",
    "proxy.authn.ldap",
    "proxy.authn.oidc",
    "proxy.state.redis_store",
)


def imported(log: str) -> set[str]:
    """The modules named in a PYTHONPROFILEIMPORTTIME log."""
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", log, re.MULTILINE))


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_with_htpasswd_imports_no_other_backend(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream, workers: int
) -> None:
    config = write_setup(tmp_path, tls, upstream.url, f"workers: {workers}\n")
    trace = {"PYTHONPROFILEIMPORTTIME": "1"}
    async with serving(["serve", "-c", str(config)], tmp_path, env=trace):
        pass
    modules = imported((tmp_path / "regproxy.err").read_text())
    assert "aiohttp.web_protocol" in modules  # the log is there, and names the workers' imports
    assert "aiohttp.web" not in modules  # its application framework: not regproxy's (http/web.py)
    heavy = {m for m in modules if m.split(".")[0] in NOT_FOR_HTPASSWD}
    assert heavy == set()
    assert {m for m in modules if m.startswith(NOT_FOR_SERVE)} == set()


@pytest.mark.parametrize("command", [["--help"], ["check"], ["quarantine", "list"]])
def test_commands_other_than_serve_import_no_aiohttp(
    tmp_path: Path, tls: TlsPair, command: list[str]
) -> None:
    """Every command starts by importing every command's module: the HTTP stack is imported
    only where it is used (serving, reading the registry in `quarantine add`)."""
    config = write_setup(tmp_path, tls, "http://127.0.0.1:1", "quarantine:\n  file: q.yaml\n")
    (tmp_path / "q.yaml").write_text("[]\n")
    args = [*command, "-c", str(config)] if command != ["--help"] else command
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    modules = imported(done.stderr)
    assert "proxy.cli.main" in modules  # the log is there
    assert {m for m in modules if m.split(".")[0] == "aiohttp"} == set()
