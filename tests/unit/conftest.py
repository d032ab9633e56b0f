"""Unit tests do no network and start no processes: what would is refused here."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests/unit is for pure code: move this test to tests/")

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield
