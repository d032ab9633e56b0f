"""The proxy's own HTTPS client: aiohttp is imported without its default contexts reading the
system CA bundle (about 2 MiB per worker), and an https:// registry is still verified against
the CAs OpenSSL is told about (SSL_CERT_FILE), as aiohttp's default context would."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from devtools.net import free_socket
from tests.conftest import USERS, TlsPair, basic, serving, write_setup

PROBE = """
import json, os
from proxy.http.clienttls import import_aiohttp, verifying
import_aiohttp()
import aiohttp.connector
print(json.dumps({
    "aiohttp": aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "ours": verifying().cert_store_stats()["x509_ca"],
    "env": os.environ.get("SSL_CERT_FILE"),
}))
"""


def test_aiohttp_default_contexts_hold_no_ca_and_the_variable_is_put_back(tls: TlsPair) -> None:
    ca_file = str(Path(tls.cert).parent / "ca.crt")
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={"SSL_CERT_FILE": ca_file, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out) == {"aiohttp": 0, "ours": 1, "env": ca_file}


@pytest.fixture
async def https_upstream(tls: TlsPair) -> AsyncIterator[str]:
    """A registry answering 200 to everything over HTTPS with the test CA's certificate."""

    async def answer(_: web.BaseRequest) -> web.Response:
        return web.json_response({}, headers={"Docker-Distribution-Api-Version": "registry/2.0"})

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    runner = web.ServerRunner(web.Server(answer))
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock, ssl_context=context).start()
    yield f"https://localhost:{sock.getsockname()[1]}"
    await runner.cleanup()


@pytest.mark.parametrize(("trusted", "status"), [(True, 200), (False, 502)])
async def test_https_registry_verified_against_ssl_cert_file(
    tmp_path: Path, tls: TlsPair, https_upstream: str, trusted: bool, status: int
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.ca.cert_pem.bytes() if trusted else b"")
    config = write_setup(tmp_path, tls, https_upstream, "workers: 2\n")
    port = int(re.search(r"listen: 127.0.0.1:(\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    env = {"SSL_CERT_FILE": str(bundle), "SSL_CERT_DIR": str(tmp_path)}
    async with (
        serving(["serve", "-c", str(config)], tmp_path, env=env),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as session,
    ):
        headers = {"Authorization": basic("pull", USERS["pull"])}
        async with session.get(f"https://localhost:{port}/v2/", headers=headers) as response:
            assert response.status == status
