"""`make conformance` without the suite's binary: a clear message, a non-zero exit, nothing
started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.conformance import BINARY_ENV, SHARED_BINARY, find_binary

ROOT = Path(__file__).resolve().parents[1]


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_found_next_to_the_checkout_or_through_the_variable(tmp_path: Path) -> None:
    checkout = tmp_path / "repo"
    checkout.mkdir()
    shared = executable(tmp_path / "shared" / "conformance" / "conformance.test")
    assert find_binary({}, checkout) == shared
    named = executable(tmp_path / "elsewhere" / "suite")
    assert find_binary({BINARY_ENV: str(named)}, checkout) == named


def test_neither_says_where_to_get_it(tmp_path: Path) -> None:
    message = find_binary({}, tmp_path / "repo")
    assert isinstance(message, str)
    assert f"{BINARY_ENV} is not set" in message
    assert str((tmp_path / "repo" / SHARED_BINARY).resolve()) in message
    assert "https://github.com/opencontainers/distribution-spec" in message
    assert "v1.1.1" in message and "go test -c" in message


def test_a_wrong_variable_is_not_replaced_by_another_binary(tmp_path: Path) -> None:
    executable(tmp_path / "shared" / "conformance" / "conformance.test")
    not_executable = tmp_path / "suite"
    not_executable.write_text("")
    for value in (tmp_path / "missing", not_executable):
        message = find_binary({BINARY_ENV: str(value)}, tmp_path / "repo")
        assert isinstance(message, str)
        assert message.startswith(f"{BINARY_ENV}={value} is not an executable file")


def test_the_script_exits_2_with_the_message(tmp_path: Path) -> None:
    env = {**os.environ, BINARY_ENV: str(tmp_path / "nowhere" / "conformance.test")}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.conformance", "--workdir", str(tmp_path / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{BINARY_ENV}={tmp_path / 'nowhere' / 'conformance.test'}" in proc.stderr
    assert "go test -c" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "work").exists()  # checked before anything is started


def test_run_as_a_file_it_says_how_to_run_it() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "conformance.py")],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "python -m scripts.conformance" in proc.stderr
