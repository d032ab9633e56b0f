"""The server's TLS context: TLS 1.2+ with forward-secret AEAD ciphers only."""

from __future__ import annotations

import ssl
from pathlib import Path

from .problems import Problem

# TLS 1.2 suites; TLS 1.3 suites are always AEAD and are left at OpenSSL's defaults.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS:!SHA1"


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def load_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> list[Problem]:
    """Load cert+key into `context` (new handshakes use them); problems instead of raising."""
    for path in (cert, key):
        if not path.is_file():
            return [Problem(str(path), 0, "TLS file not found")]
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = (
            "certificate does not match the key"
            if "KEY_VALUES_MISMATCH" in str(exc)
            else f"cannot load certificate/key: {exc.reason or exc}"
        )
        return [Problem(f"{cert} + {key}", 0, reason)]
    except OSError as exc:
        return [Problem(str(cert), 0, f"cannot read: {exc.strerror or exc}")]
    return []
