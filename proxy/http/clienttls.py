"""aiohttp imported without reading the system's CA bundle, and the context the proxy's own
HTTPS requests to the registry verify with instead."""

# aiohttp builds two default client contexts when first imported (aiohttp/connector.py), each
# reading the system CA bundle: about 2 MiB of parsed certificates in every worker, used by
# nothing when the registry is plain http:// (issue 24: 48 MiB per worker). Imported with
# SSL_CERT_FILE pointing nowhere, those contexts hold none; an https:// registry is verified
# with `verifying()`, which reads the bundle (and honours SSL_CERT_FILE) as aiohttp's would.

from __future__ import annotations

import contextlib
import functools
import os
import ssl
from collections.abc import Iterator

CERT_FILE_ENV = "SSL_CERT_FILE"
NOWHERE = "/nonexistent/regproxy-ca-bundle-not-loaded-at-import"


@contextlib.contextmanager
def without_ca_bundle() -> Iterator[None]:
    """Within the block OpenSSL's default CA file is one that does not exist (no error: the
    system's CA directory is still looked up lazily); the variable is put back afterwards."""
    before = os.environ.get(CERT_FILE_ENV)
    os.environ[CERT_FILE_ENV] = NOWHERE
    try:
        yield
    finally:
        if before is None:
            del os.environ[CERT_FILE_ENV]
        else:
            os.environ[CERT_FILE_ENV] = before


def import_aiohttp() -> None:
    """Import aiohttp (its client too) without its default contexts reading the CA bundle;
    nothing when it is already imported."""
    with without_ca_bundle():
        import aiohttp  # noqa: F401


@functools.cache
def verifying() -> ssl.SSLContext:
    """The system's CAs (SSL_CERT_FILE and SSL_CERT_DIR honoured), as aiohttp's default
    verifying context is built; read once per process."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    return context


def for_url(url: str) -> ssl.SSLContext | bool:
    """aiohttp's `ssl=` for a request to `url`: the verifying context for https://, True (the
    default, which plain http:// does not use) otherwise."""
    return verifying() if url[:6].lower() == "https:" else True
