"""`make run`'s script in a copy of the checkout: certificate, first user with a printed random
password, a local docker-registry, the proxy; SIGINT stops both."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.net import free_port

ROOT = Path(__file__).resolve().parents[1]


def get(url: str, cafile: Path, user: str, password: str) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_make_run_script_from_a_fresh_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "run.py", checkout / "scripts" / "run.py")
    shutil.copytree(
        ROOT / "conf", checkout / "conf", ignore=shutil.ignore_patterns("htpasswd", "groups")
    )
    proxy_port, registry_port = free_port(), free_port()
    config = checkout / "conf" / "regproxy.yaml"
    config.write_text(
        config.read_text()
        .replace("127.0.0.1:5043", f"127.0.0.1:{proxy_port}")
        .replace("127.0.0.1:5000", f"127.0.0.1:{registry_port}")
    )
    process = subprocess.Popen(
        [sys.executable, str(checkout / "scripts" / "run.py")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = ""
    deadline = time.monotonic() + 60
    while "listening on" not in output and time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, f"run.py exited early:\n{output}"
        output += line
    password = re.search(r"password:\n\s+(\S+)\n", output)
    assert password, output
    cert = checkout / "certs" / "server.crt"
    assert (checkout / "certs" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (checkout / "conf" / "groups").read_text() == "pusher: admin\n"
    assert (checkout / "data" / "registry.yml").exists()
    url = f"https://localhost:{proxy_port}/v2/_catalog"
    assert get(url, cert, "admin", password.group(1)) == 200  # through to the registry
    assert get(url, cert, "admin", "guess") == 401
    process.send_signal(signal.SIGINT)
    remaining, _ = process.communicate(timeout=30)
    assert process.returncode == 0, remaining
    assert "stopped" in remaining
    # The registry's own lines go to data/registry.log; the terminal shows regproxy's only.
    output += remaining
    registry_log = (checkout / "data" / "registry.log").read_text()
    assert re.search(r'"GET /v2/_catalog[?\S]* HTTP/1.1" 200 ', registry_log), registry_log
    assert "log in data/registry.log" in output
    catalog = [line for line in output.splitlines() if "GET /v2/_catalog" in line]
    assert [line.split()[2] for line in catalog] == ["admin", "-"]  # regproxy's: 200, then 401
    assert not [line for line in output.splitlines() if "level=" in line or "go.version" in line]
    for port in (proxy_port, registry_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing left listening
