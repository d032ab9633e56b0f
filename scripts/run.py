"""`make run`: a working proxy on https://127.0.0.1:5043 from a fresh checkout.

Makes a self-signed certificate when none is there, a first user with a random password when
there is no htpasswd file (printed once, never a well-known one), starts a local registry
(Debian's docker-registry, data in ./data, its own log in data/registry.log so that the
terminal shows regproxy's lines only) when the upstream is a loopback address where nothing
answers, then runs `regproxy serve` in the foreground. Ctrl-C stops both.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from proxy.authn.credentials import hash_password
from proxy.conf import config as config_module

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "conf" / "regproxy.yaml"
FIRST_USER = "admin"


def ensure_certificate(cert: Path, key: Path) -> None:
    if cert.exists() and key.exists():
        return
    cert.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "825",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    print(f"made a self-signed certificate: {cert} (SAN localhost, 127.0.0.1, ::1)")


def ensure_users(htpasswd: Path, groups: Path | None, push_group: str) -> None:
    if htpasswd.exists():
        return
    password = secrets.token_urlsafe(18)
    htpasswd.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(htpasswd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{FIRST_USER}:{hash_password(password)}\n")
    if groups is not None and not groups.exists():
        groups.write_text(f"{push_group}: {FIRST_USER}\n")
    print(f"created {htpasswd}: user {FIRST_USER!r} (in group {push_group!r}), password:")
    print(f"    {password}")
    print("shown once only; change it with: .venv/bin/regproxy passwd conf/htpasswd admin")


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def start_registry(host: str, port: int) -> subprocess.Popen[bytes] | None:
    """A local docker-registry when the upstream is loopback and nobody listens there."""
    if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback or answers(host, port):
        return None
    if shutil.which("docker-registry") is None:
        subprocess.run([str(ROOT / "scripts" / "install-deps.sh"), "docker-registry"], check=True)
    data = ROOT / "data"
    data.mkdir(exist_ok=True)
    registry_config = data / "registry.yml"
    registry_config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {data / 'registry'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {host}:{port}\n  secret: {secrets.token_hex(16)}\n"
    )
    log = data / "registry.log"
    print(f"starting docker-registry on {host}:{port} (data in data/, log in data/registry.log)")
    with log.open("ab") as output:
        registry = subprocess.Popen(
            ["docker-registry", "serve", str(registry_config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not answers(host, port):
        if registry.poll() is not None or time.monotonic() > deadline:
            registry.kill()
            tail = log.read_text(errors="replace").splitlines()[-10:]
            sys.exit(
                "docker-registry did not start; the end of data/registry.log:\n" + "\n".join(tail)
            )
        time.sleep(0.1)
    return registry


def main() -> int:
    os.chdir(ROOT)
    try:
        config = config_module.load(CONFIG if CONFIG.exists() else None)
    except config_module.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    ensure_certificate(config.tls_cert, config.tls_key)
    ensure_users(config.htpasswd, config.groups, config.push_group)
    upstream = urlsplit(config.upstream)
    registry = start_registry(upstream.hostname or "127.0.0.1", upstream.port or 80)
    # Own session: Ctrl-C reaches only this script, which asks the proxy once to drain.
    proxy = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], start_new_session=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: proxy.send_signal(signal.SIGTERM))
    code = proxy.wait()
    if registry is not None:
        registry.terminate()
        registry.wait(timeout=10)
    return code


if __name__ == "__main__":
    sys.exit(main())
