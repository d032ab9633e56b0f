"""Bodies stream both ways, unchanged: Content-Length and chunked uploads, large downloads,
HEAD, and content encodings passed through untouched."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import AsyncIterator

from aiohttp import web

from tests.conftest import FakeUpstream, ProxyFactory

DIGEST = "sha256:" + "b" * 64
MIB = 1024 * 1024


def pattern(size: int) -> bytes:
    return (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]


async def generate(total: int, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    data = pattern(piece)
    sent = 0
    while sent < total:
        chunk = data[: min(piece, total - sent)]
        sent += len(chunk)
        yield chunk


def expected_sha(total: int, piece: int = 64 * 1024) -> str:
    digest, data, sent = hashlib.sha256(), pattern(piece), 0
    while sent < total:
        chunk = data[: min(piece, total - sent)]
        digest.update(chunk)
        sent += len(chunk)
    return digest.hexdigest()


async def test_chunked_upload_streams_through(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    size = 48 * MIB + 123
    path = proxy.upload("/v2/a/blobs/uploads/u-1", "push")
    async with proxy.session.patch(
        proxy.url + path, data=generate(size), headers=proxy.auth("push")
    ) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert (seen.body_length, seen.body_sha256) == (size, expected_sha(size))
    assert seen.headers["transfer-encoding"] == ["chunked"]


async def test_content_length_upload_keeps_its_length(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    size = 32 * MIB
    headers = {**proxy.auth("push"), "Content-Length": str(size)}
    path = f"/v2/a/blobs/uploads/u-2?digest={DIGEST}"
    sent = proxy.upload(path, "push")
    async with proxy.session.put(proxy.url + sent, data=generate(size), headers=headers) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert seen.path_qs == path
    assert seen.headers["content-length"] == [str(size)]
    assert "transfer-encoding" not in seen.headers
    assert (seen.body_length, seen.body_sha256) == (size, expected_sha(size))


async def test_empty_put_keeps_content_length_zero(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    headers = {**proxy.auth("push"), "Content-Length": "0"}
    async with proxy.session.put(
        proxy.url + proxy.upload(f"/v2/a/blobs/uploads/u-3?digest={DIGEST}", "push"),
        headers=headers,
    ) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert seen.headers["content-length"] == ["0"] and seen.body_length == 0


async def test_large_download_and_head_keep_length(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    size = 64 * MIB + 7

    async def blob(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Length": str(size), "Docker-Content-Digest": DIGEST}
        )
        await response.prepare(request)
        if request.method == "GET":
            async for chunk in generate(size):
                await response.write(chunk)
        return response

    upstream.handlers[f"/v2/a/blobs/{DIGEST}"] = blob
    proxy = await make_proxy()
    url = proxy.url + f"/v2/a/blobs/{DIGEST}"
    async with proxy.session.head(url, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        assert await resp.read() == b""
    async with proxy.session.get(url, headers=proxy.auth("pull")) as resp:
        assert resp.headers["Content-Length"] == str(size)
        digest, length = hashlib.sha256(), 0
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
    assert (length, digest.hexdigest()) == (size, expected_sha(size))


async def test_content_encoding_passes_untouched(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    compressed = gzip.compress(os.urandom(4096) + b"x" * 100_000)

    async def gzipped(request: web.Request) -> web.StreamResponse:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    upstream.handlers["/v2/a/manifests/gz"] = gzipped
    proxy = await make_proxy()
    headers = {**proxy.auth("push"), "Content-Encoding": "gzip"}
    async with proxy.session.put(
        proxy.url + "/v2/a/manifests/gz", data=compressed, headers=headers
    ) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == compressed  # the session does not decompress
    (seen,) = upstream.requests
    assert seen.body_sha256 == hashlib.sha256(compressed).hexdigest()
    assert seen.headers["content-encoding"] == ["gzip"]
