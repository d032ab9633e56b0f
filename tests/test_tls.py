"""TLS as real clients see it: old protocols and weak ciphers refused (openssl s_client),
SIGHUP swaps the certificate without dropping connections."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest
import trustme

from tests.conftest import Served, TlsPair, replace_file


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


def negotiated(result: subprocess.CompletedProcess[str]) -> str | None:
    for line in result.stdout.splitlines():
        if "Cipher is" in line and "(NONE)" not in line:
            return line.split("Cipher is")[-1].strip()
    return None


@pytest.mark.parametrize(
    ("args", "accepted"),
    [
        (("-tls1", "-cipher", "DEFAULT@SECLEVEL=0"), False),
        (("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"), False),
        (("-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"), False),  # no forward secrecy
        (("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA:@SECLEVEL=0"), False),  # CBC + SHA1
        (("-tls1_2", "-cipher", "ECDHE-RSA-DES-CBC3-SHA:@SECLEVEL=0"), False),
        (("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"), True),
        (("-tls1_3",), True),
    ],
)
async def test_protocols_and_ciphers(served: Served, args: tuple[str, ...], accepted: bool) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    result = await asyncio.to_thread(s_client, port, *args)
    assert (negotiated(result) is not None) is accepted, result.stdout[-600:] + result.stderr


async def test_sighup_reloads_the_certificate_without_dropping_connections(
    served: Served, tls: TlsPair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context(), server_hostname="localhost"
    )
    new_ca = trustme.CA()
    leaf = new_ca.issue_cert("localhost")
    try:
        replace_file(served.directory / "server.crt", leaf.cert_chain_pems[0].bytes())
        replace_file(served.directory / "server.key", leaf.private_key_pem.bytes())
        served.process.send_signal(signal.SIGHUP)
        ca_file = tmp_path_factory.mktemp("newca") / "ca.pem"
        new_ca.cert_pem.write_to_path(str(ca_file))
        for _ in range(50):
            result = await asyncio.to_thread(
                s_client, port, "-CAfile", str(ca_file), "-verify_return_error"
            )
            if "Verify return code: 0 (ok)" in result.stdout:
                break
            await asyncio.sleep(0.1)
        assert "Verify return code: 0 (ok)" in result.stdout
        # The connection opened before the reload still works.
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 401")
    finally:
        writer.close()
