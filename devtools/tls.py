"""A test CA and a server certificate for loopback, and clients that trust only that CA."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from devtools.net import LOOPBACK


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


def https_status(url: str, authorization: str, ca_cert: Path, timeout: float) -> int:
    """The status of a GET of `url` with this Authorization header, trusting `ca_cert`."""
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for_tls(
    port: int,
    context: ssl.SSLContext,
    process: subprocess.Popen[bytes],
    timeout: float,
    host: str = LOOPBACK,
) -> None:
    """Until a TLS handshake with `host:port` (as localhost) succeeds; RuntimeError when
    `process` exits first or none does within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before answering on {port}")
        try:
            with (
                socket.create_connection((host, port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="localhost"),
            ):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no TLS handshake on port {port} within {timeout:g}s")
