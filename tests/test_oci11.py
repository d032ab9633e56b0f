"""OCI distribution-spec 1.1 content passes through untouched, shown against a fake upstream
that implements it (Debian's registry 2.8 does not; tests/e2e/test_oci11.py shows the parts it
has): the referrers API with `artifactType` filtering and `OCI-Filters-Applied`, `OCI-Subject`
on manifest PUT answers, `artifactType`/`subject` manifests byte for byte, tag lists with
`n`/`last` and `Link`, and `416`/`Range` answers during chunked uploads."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import FakeUpstream, ProxyFactory

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SBOM = "application/vnd.example.sbom.v1+json"
API = "Docker-Distribution-Api-Version"
NAMESPACES = 'acl:\n  - repositories: ["${user}/**"]\n    actions: "*"\n'


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Bytes as a client wrote them: key order, spacing and escapes that a re-encoding would change.
SUBJECT_BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
SUBJECT = sha256(SUBJECT_BODY)
ARTIFACT = (
    b'{\n  "schemaVersion": 2,\n  "mediaType": "' + MANIFEST.encode() + b'",\n'
    b'  "artifactType": "' + SBOM.encode() + b'",\n'
    b'  "config": {"mediaType": "' + EMPTY.encode() + b'", "size": 2,'
    b' "digest": "' + sha256(b"{}").encode() + b'", "data": "e30="},\n'
    b'  "layers": [{"mediaType": "' + SBOM.encode() + b'", "size": 3,'
    b' "digest": "' + sha256(b"abc").encode() + b'"}],\n'
    b'  "subject": {"mediaType": "'
    + MANIFEST.encode()
    + b'", "size": '
    + str(len(SUBJECT_BODY)).encode()
    + b', "digest": "'
    + SUBJECT.encode()
    + b'"},\n'
    b'  "annotations": {"org.example.caf\\u00e9": "\\u2713", "a": "1"}\n}'
)
ARTIFACT_DIGEST = sha256(ARTIFACT)


def referrers_index(artifact_type: str | None) -> bytes:
    entry = {"mediaType": MANIFEST, "size": len(ARTIFACT), "digest": ARTIFACT_DIGEST}
    entries = [entry | {"artifactType": SBOM}, entry | {"artifactType": "application/x-other"}]
    kept = [e for e in entries if artifact_type in (None, e["artifactType"])]
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": kept}).encode()


async def test_referrers_with_artifact_type_filter(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def referrers(request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("artifactType")
        headers = {"Content-Type": INDEX}
        if wanted is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        return web.Response(body=referrers_index(wanted), headers=headers)

    path = f"/v2/pull/app/referrers/{SUBJECT}"
    upstream.handlers[path] = referrers
    proxy = await make_proxy(NAMESPACES)
    query = "?artifactType=application%2Fvnd.example.sbom.v1%2Bjson"  # `+` must stay a `+`
    async with proxy.session.get(
        aiohttp.client.URL(proxy.url + path + query, encoded=True), headers=proxy.auth("pull")
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == INDEX
        assert resp.headers.getall("OCI-Filters-Applied") == ["artifactType"]
        assert await resp.read() == referrers_index(SBOM)
    async with proxy.session.get(proxy.url + path, headers=proxy.auth("pull")) as resp:
        assert resp.status == 200
        assert "OCI-Filters-Applied" not in resp.headers  # never added by the proxy
        assert len(json.loads(await resp.read())["manifests"]) == 2
    # The same parameters upstream (yarl re-encodes what needs no encoding: %2F becomes /).
    forwarded = [urlsplit(r.path_qs) for r in upstream.requests]
    assert [(f.path, parse_qsl(f.query)) for f in forwarded] == [
        (path, [("artifactType", SBOM)]),
        (path, []),
    ]
    # The referrers of another namespace's manifest are that namespace's to read.
    async with proxy.session.get(
        proxy.url + f"/v2/other/app/referrers/{SUBJECT}", headers=proxy.auth("pull")
    ) as resp:
        assert resp.status == 403
    assert len(upstream.requests) == 2


async def test_referrers_paged_with_link(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    path = f"/v2/a/referrers/{SUBJECT}"
    nexts = {
        "relative": f'<{path}?n=1&last=x>; rel="next"',
        "upstream": f'<{upstream.url}{path}?n=1&last=x>; rel="next"',
    }

    async def paged(request: web.Request) -> web.StreamResponse:
        link = nexts[request.query["which"]]
        return web.Response(body=referrers_index(None), headers={"Link": link})

    upstream.handlers[path] = paged
    proxy = await make_proxy()
    origin = f"https://localhost:{proxy.server.port}"
    for which, expected in (
        ("relative", nexts["relative"]),
        ("upstream", f'<{origin}{path}?n=1&last=x>; rel="next"'),
    ):
        url = f"{proxy.url}{path}?which={which}"
        async with proxy.session.get(url, headers=proxy.auth("pull")) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Link") == [expected]


async def test_manifest_with_subject_put_answer_keeps_oci_subject(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def put(request: web.Request) -> web.StreamResponse:
        location = f"{upstream.url}/v2/a/manifests/{ARTIFACT_DIGEST}"
        return web.Response(
            status=201,
            headers={
                "Location": location,
                "Docker-Content-Digest": ARTIFACT_DIGEST,
                "OCI-Subject": SUBJECT,
            },
        )

    path = f"/v2/a/manifests/{ARTIFACT_DIGEST}"
    upstream.handlers[path] = put
    proxy = await make_proxy()
    headers = {**proxy.auth("push"), "Content-Type": MANIFEST}
    async with proxy.session.put(proxy.url + path, data=ARTIFACT, headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers.getall("OCI-Subject") == [SUBJECT]
        assert resp.headers["Docker-Content-Digest"] == ARTIFACT_DIGEST
        assert resp.headers["Location"] == f"https://localhost:{proxy.server.port}{path}"
    (seen,) = upstream.requests
    assert (seen.method, seen.path_qs) == ("PUT", path)
    assert seen.headers["content-type"] == [MANIFEST]
    assert (seen.body_sha256, seen.body_length) == (ARTIFACT_DIGEST[7:], len(ARTIFACT))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_artifact_manifest_pulled_byte_for_byte(
    make_proxy: ProxyFactory, upstream: FakeUpstream, method: str
) -> None:
    async def get(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": MANIFEST, "Docker-Content-Digest": ARTIFACT_DIGEST}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(ARTIFACT))
            return web.Response(headers=headers)
        return web.Response(body=ARTIFACT, headers=headers)

    for reference in (ARTIFACT_DIGEST, "sbom"):
        upstream.handlers[f"/v2/a/manifests/{reference}"] = get
    proxy = await make_proxy()
    headers = {**proxy.auth("pull"), "Accept": f"{MANIFEST}, {INDEX}"}
    for reference in (ARTIFACT_DIGEST, "sbom"):
        url = f"{proxy.url}/v2/a/manifests/{reference}"
        async with proxy.session.request(method, url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == MANIFEST
            assert resp.headers["Docker-Content-Digest"] == ARTIFACT_DIGEST
            assert resp.headers["Content-Length"] == str(len(ARTIFACT))
            assert await resp.read() == (ARTIFACT if method == "GET" else b"")
    assert all(r.headers["accept"] == [f"{MANIFEST}, {INDEX}"] for r in upstream.requests)


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        pytest.param(
            '</v2/a/tags/list?n=2&last=v2>; rel="next"',
            '</v2/a/tags/list?n=2&last=v2>; rel="next"',
            id="relative",
        ),
        pytest.param(
            '<{up}/v2/a/tags/list?n=2&last=v2>; rel="next"',
            '<{proxy}/v2/a/tags/list?n=2&last=v2>; rel="next"',
            id="at-the-upstream",
        ),
        pytest.param(
            '<https://mirror.example/v2/a/tags/list?n=2&last=v2>; rel="next"',
            '<https://mirror.example/v2/a/tags/list?n=2&last=v2>; rel="next"',
            id="elsewhere",
        ),
        pytest.param(
            '<{up}/v2/a/tags/list?n=2&last=v2>; rel="next", </v2/a/tags/list?n=2>; rel="first"',
            '<{proxy}/v2/a/tags/list?n=2&last=v2>; rel="next", </v2/a/tags/list?n=2>; rel="first"',
            id="two-links",
        ),
    ],
)
async def test_tag_list_paging_with_n_last_and_link(
    make_proxy: ProxyFactory, upstream: FakeUpstream, link: str, expected: str
) -> None:
    tags = ["v0", "v1", "v2", "v3", "v4"]

    async def tag_list(request: web.Request) -> web.StreamResponse:
        n, last = int(request.query["n"]), request.query.get("last", "")
        page = [t for t in tags if t > last][:n]
        headers = {"Link": link.format(up=upstream.url)}
        return web.json_response({"name": "a", "tags": page}, headers=headers)

    upstream.handlers["/v2/a/tags/list"] = tag_list
    proxy = await make_proxy()
    async with proxy.session.get(
        proxy.url + "/v2/a/tags/list?n=2&last=v0", headers=proxy.auth("pull")
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"name": "a", "tags": ["v1", "v2"]}
        origin = f"https://localhost:{proxy.server.port}"
        assert resp.headers.getall("Link") == [expected.format(proxy=origin)]
    (seen,) = upstream.requests
    assert seen.path_qs == "/v2/a/tags/list?n=2&last=v0"


async def test_chunked_upload_range_and_416_answers(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """A registry keeps the offset: the next chunk's Content-Range must start there, else 416
    with the Range it has. Upstream Locations point back at the proxy; Range is untouched."""
    session = "/v2/a/blobs/uploads/u1"
    received = bytearray()

    def where() -> dict[str, str]:
        return {
            "Location": f"{upstream.url}{session}?_state=s{len(received)}",
            "Range": f"0-{len(received) - 1}",
            "Docker-Upload-UUID": "u1",
        }

    async def start(_: web.Request) -> web.StreamResponse:
        return web.Response(status=202, headers=where() | {"OCI-Chunk-Min-Length": "5"})

    async def upload(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.Response(status=204, headers=where())
        first = int(request.headers["Content-Range"].split("-")[0])
        if first != len(received):  # answered without reading the chunk
            error = {"errors": [{"code": "BLOB_UPLOAD_INVALID", "message": "out of order"}]}
            return web.json_response(error, status=416, headers=where())
        received.extend(await request.read())
        return web.Response(status=202, headers=where())

    upstream.handlers["/v2/a/blobs/uploads/"] = start
    upstream.handlers[session] = upload
    upstream.streaming.add(session)
    proxy = await make_proxy()
    origin = f"https://localhost:{proxy.server.port}"
    push = proxy.auth("push")

    async def patch(content_range: str, chunk: bytes) -> aiohttp.ClientResponse:
        headers = push | {
            "Content-Range": content_range,
            "Content-Type": "application/octet-stream",
        }
        url = proxy.url + proxy.upload(session, "push")  # the Location it was given
        async with proxy.session.patch(url, data=chunk, headers=headers) as resp:
            await resp.read()
            return resp

    async with proxy.session.post(proxy.url + "/v2/a/blobs/uploads/", headers=push) as resp:
        assert resp.status == 202
        assert resp.headers["OCI-Chunk-Min-Length"] == "5"
        assert resp.headers["Location"] == proxy.upload(f"{origin}{session}?_state=s0", "push")
    assert (await patch("0-4", b"hello")).headers["Range"] == "0-4"
    ahead = await patch("10-14", b"later")  # skips 5-9
    assert ahead.status == 416
    assert (ahead.headers["Range"], ahead.headers["Location"]) == (
        "0-4",
        proxy.upload(f"{origin}{session}?_state=s5", "push"),
    )
    assert ahead.headers.getall(API) == ["registry/2.0"]
    again = await patch("0-4", b"hello")  # a retried chunk
    assert (again.status, again.headers["Range"]) == (416, "0-4")
    async with proxy.session.get(proxy.url + proxy.upload(session, "push"), headers=push) as resp:
        assert resp.status == 204
        assert resp.headers["Range"] == "0-4"
        assert resp.headers["Location"] == proxy.upload(f"{origin}{session}?_state=s5", "push")
        assert await resp.read() == b""
    ok = await patch("5-9", b"world")
    assert (ok.status, ok.headers["Range"]) == (202, "0-9")
    assert received == b"helloworld"
    ranges = [r.headers.get("content-range") for r in upstream.requests if r.method == "PATCH"]
    assert ranges == [["0-4"], ["10-14"], ["0-4"], ["5-9"]]
