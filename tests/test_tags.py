"""Tag policy on the request path, against the recording fake upstream: immutable tags (the
registry asked before a push, the exact bytes forwarded), races between pushes of one new tag,
the registry failing during a check (refused, never allowed), protected deletes, tag rules in
the ACL, and `regproxy explain --tag`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from aiohttp import web

from devtools.net import free_port
from proxy.guards import tags as tagguard
from proxy.serve import server as server_module
from proxy.state.store import LocalStore
from proxy.upstream import manifests
from proxy.upstream.manifests import MANIFEST_TYPES, MAX_MANIFEST
from tests.conftest import (
    USERS,
    FakeUpstream,
    KeptConnection,
    ProxyFactory,
    RunningProxy,
    Served,
    TlsPair,
    basic,
    htpasswd_text,
    one_connection_per_worker,
    regproxy,
)

ROOT = Path(__file__).resolve().parents[1]
OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
# The fixture's config has 6 lines before these: the immutable rule is at regproxy.yaml:8.
GUARDS = """immutable_tags:
  - repositories: ["apps/**"]
    tags: ["v*"]
protected_deletes:
  - repositories: ["base/**"]
  - repositories: ["scratch/**"]
    allow_by_digest: true
"""
RULE = "regproxy.yaml:8"


def manifest(n: int) -> bytes:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": n}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": [layer]}).encode()


def digest_of(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


@dataclass
class Repository:
    """One repository's manifests as a registry serves them through the fake upstream: by tag
    and by digest, PUT, DELETE, and the tag list."""

    upstream: FakeUpstream
    name: str = "apps/web"
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # digest -> body, type
    gate: Callable[[], Awaitable[None]] | None = None  # awaited by each PUT before it stores
    send_digest: bool = True  # Docker-Content-Digest on answers

    def add(self, tag: str | None, body: bytes, media_type: str = OCI) -> str:
        digest = digest_of(body)
        self.manifests[digest] = (body, media_type)
        if tag is not None:
            self.tags[tag] = digest
        return digest

    def serve(self, *refs: str) -> None:
        for ref in refs:
            path = f"/v2/{self.name}/manifests/{ref}"
            self.upstream.handlers[path] = self.handle
            self.upstream.streaming.add(path)
        self.upstream.handlers[f"/v2/{self.name}/tags/list"] = self.tag_list

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ref = request.path.rsplit("/", 1)[1]
        if request.method == "PUT":
            body = await request.read()
            if self.gate is not None:
                await self.gate()
            digest = self.add(ref, body, request.headers.get("Content-Type", OCI))
            return web.Response(status=201, headers={"Docker-Content-Digest": digest})
        digest = self.tags.get(ref, ref)
        if digest not in self.manifests:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        if request.method == "DELETE":
            del self.manifests[digest]
            self.tags = {t: d for t, d in self.tags.items() if d != digest}
            return web.Response(status=202)
        body, media_type = self.manifests[digest]
        headers = {"Content-Type": media_type, "Content-Length": str(len(body))}
        if self.send_digest:
            headers["Docker-Content-Digest"] = digest
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)

    async def tag_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"name": self.name, "tags": sorted(self.tags)})


def requests_of(upstream: FakeUpstream, method: str) -> list[str]:
    return [r.path_qs for r in upstream.requests if r.method == method]


async def put(
    proxy: RunningProxy, path: str, body: bytes, user: str = "push", chunked: bool = False
) -> tuple[int, dict[str, str], str]:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    data = pieces() if chunked else io.BytesIO(body)
    headers = {**proxy.auth(user), "Content-Type": OCI}
    async with proxy.session.put(proxy.url + path, data=data, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def call(proxy: RunningProxy, method: str, path: str, user: str = "push") -> tuple[int, str]:
    async with proxy.session.request(method, proxy.url + path, headers=proxy.auth(user)) as resp:
        return resp.status, await resp.text()


def error_message(text: str) -> str:
    return str(json.loads(text)["errors"][0]["message"])


# --------------------------------------------------------------------------------------------
# Immutable tags
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_new_immutable_tag_is_asked_for_then_pushed_byte_for_byte(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chunked: bool
) -> None:
    repo = Repository(upstream)
    repo.serve("v1")
    proxy = await make_proxy(GUARDS)
    body = b" " + manifest(1) * 3 + b"\n"  # any bytes: the registry's digest is of these
    status, headers, _ = await put(proxy, "/v2/apps/web/manifests/v1", body, chunked=chunked)
    assert status == 201
    assert headers["Docker-Content-Digest"] == digest_of(body)
    assert repo.manifests[digest_of(body)][0] == body
    assert [(r.method, r.path_qs) for r in upstream.requests] == [
        ("HEAD", "/v2/apps/web/manifests/v1"),
        ("PUT", "/v2/apps/web/manifests/v1"),
    ]
    head = upstream.requests[0]
    assert head.headers["accept"] == [", ".join(MANIFEST_TYPES)]
    assert "authorization" not in head.headers  # the proxy's own request
    assert head.headers["x-forwarded-proto"] == ["https"]


async def test_an_immutable_tag_is_never_moved_and_a_retried_push_succeeds(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream)
    first = repo.add("v1", manifest(1))
    repo.serve("v1")
    proxy = await make_proxy(GUARDS)
    other = manifest(2)
    status, _, text = await put(proxy, "/v2/apps/web/manifests/v1", other)
    assert status == 403
    assert json.loads(text)["errors"][0]["code"] == "DENIED"
    assert error_message(text) == (
        f"tag v1 is immutable (rule {RULE}): apps/web:v1 is {first}, this push is"
        f" {digest_of(other)}"
    )
    assert requests_of(upstream, "PUT") == []
    assert repo.tags == {"v1": first}
    status, _, _ = await put(proxy, "/v2/apps/web/manifests/v1", manifest(1))
    assert status == 201
    assert requests_of(upstream, "PUT") == ["/v2/apps/web/manifests/v1"]


async def test_tags_no_rule_guards_are_pushed_without_asking(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream)
    repo.add("latest", manifest(1))
    repo.serve("latest")
    proxy = await make_proxy(GUARDS)
    status, _, _ = await put(proxy, "/v2/apps/web/manifests/latest", manifest(2))
    assert status == 201
    assert [r.method for r in upstream.requests] == ["PUT"]


async def test_without_a_digest_header_the_current_manifest_is_hashed(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream, send_digest=False)
    repo.add("v1", manifest(1))
    repo.serve("v1")
    proxy = await make_proxy(GUARDS)
    assert (await put(proxy, "/v2/apps/web/manifests/v1", manifest(2)))[0] == 403
    assert (await put(proxy, "/v2/apps/web/manifests/v1", manifest(1)))[0] == 201
    assert [r.method for r in upstream.requests] == ["HEAD", "GET", "HEAD", "GET", "PUT"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_manifest_over_the_registry_limit_is_refused_unread(
    make_proxy: ProxyFactory, upstream: FakeUpstream, chunked: bool
) -> None:
    Repository(upstream).serve("v1")
    proxy = await make_proxy(GUARDS)
    status, _, text = await put(
        proxy, "/v2/apps/web/manifests/v1", b"x" * (MAX_MANIFEST + 1), chunked=chunked
    )
    assert status == 413
    assert "manifest larger than" in error_message(text)
    assert upstream.requests == []


async def test_manifests_in_memory_are_bounded_per_worker(
    make_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push whose manifest would take the worker over its budget is told to retry; the
    budget is given back when a push ends, so the next one fits."""
    monkeypatch.setattr(tagguard, "MANIFEST_BUDGET", 400)
    repo = Repository(upstream)
    repo.serve("v1", "v2")
    proxy = await make_proxy(GUARDS)
    status, headers, text = await put(proxy, "/v2/apps/web/manifests/v1", b" " * 300 + manifest(1))
    assert status == 503 and headers["Retry-After"] == "5"
    assert "too many manifests in flight" in error_message(text)
    assert upstream.requests == []
    for tag in ("v1", "v2"):
        assert (await put(proxy, f"/v2/apps/web/manifests/{tag}", manifest(1)))[0] == 201


class WatchedStore(LocalStore):
    """The worker's store, telling the test when a second caller asks for a lock."""

    second_caller = asyncio.Event()
    names: ClassVar[list[str]] = []

    @contextlib.asynccontextmanager
    async def lock(self, name: str, ttl: float, wait: float) -> AsyncIterator[None]:
        WatchedStore.names.append(name)
        if len(WatchedStore.names) == 2:
            WatchedStore.second_caller.set()
        async with super().lock(name, ttl, wait):
            yield


@pytest.fixture
def watched_store(monkeypatch: pytest.MonkeyPatch) -> type[WatchedStore]:
    monkeypatch.setattr(WatchedStore, "second_caller", asyncio.Event())
    monkeypatch.setattr(WatchedStore, "names", [])
    monkeypatch.setattr(server_module, "LocalStore", WatchedStore)
    return WatchedStore


@pytest.mark.parametrize("same", [False, True], ids=["different", "same"])
async def test_two_pushes_of_one_new_tag_cannot_both_win(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    watched_store: type[WatchedStore],
    same: bool,
) -> None:
    """The first push's PUT reaches the registry and is held there until the second push is
    waiting for the lock: had the second checked the tag meanwhile, it would have found it
    absent and both would have won."""
    repo = Repository(upstream)

    async def held_until_second_waits() -> None:
        await asyncio.wait_for(watched_store.second_caller.wait(), 10)

    repo.gate = held_until_second_waits
    repo.serve("v1")
    proxy = await make_proxy(GUARDS)
    bodies = [manifest(1), manifest(1 if same else 2)]
    results = await asyncio.gather(
        *(put(proxy, "/v2/apps/web/manifests/v1", body) for body in bodies)
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == ([201, 201] if same else [201, 403])
    assert len(set(watched_store.names)) == 1  # one lock name for the repository
    assert [r.method for r in upstream.requests].count("PUT") == (2 if same else 1)
    winner = next(i for i, (status, _, _) in enumerate(results) if status == 201)
    assert repo.tags == {"v1": digest_of(bodies[winner])}


async def test_a_push_waiting_too_long_for_the_lock_is_told_to_retry(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """A push of another tag of the repository waits while the first holds the lock."""
    repo = Repository(upstream)
    release = asyncio.Event()

    async def held() -> None:
        await asyncio.wait_for(release.wait(), 10)

    repo.gate = held
    repo.serve("v1", "v2")
    proxy = await make_proxy(GUARDS + "limits:\n  upstream_wait: 0.2\n")
    first = asyncio.ensure_future(put(proxy, "/v2/apps/web/manifests/v1", manifest(1)))
    await asyncio.wait_for(_put_arrived(upstream), 5)
    status, headers, text = await put(proxy, "/v2/apps/web/manifests/v2", manifest(2))
    assert status == 503 and headers["Retry-After"] == "5"
    assert "retry later" in error_message(text)
    release.set()
    assert (await first)[0] == 201
    assert requests_of(upstream, "HEAD") == ["/v2/apps/web/manifests/v1"]


async def _put_arrived(upstream: FakeUpstream) -> None:
    while "PUT" not in [r.method for r in upstream.requests]:
        await asyncio.sleep(0.01)


# The registry failing during the check: refused, never allowed.


async def _status_500(request: web.Request) -> web.StreamResponse:
    return web.json_response({"errors": [{"code": "UNKNOWN"}]}, status=500)


async def _reset(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


async def _unauthorized(request: web.Request) -> web.StreamResponse:
    return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})


@pytest.mark.parametrize(
    "answer", [_status_500, _reset, _unauthorized], ids=["500", "reset", "401"]
)
async def test_a_registry_failing_the_check_refuses_the_push(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await (answer(request) if request.method == "HEAD" else _status_500(request))

    upstream.handlers["/v2/apps/web/manifests/v1"] = handler
    proxy = await make_proxy(GUARDS)
    status, headers, text = await put(proxy, "/v2/apps/web/manifests/v1", manifest(1))
    assert status == 503 and headers["Retry-After"] == "5"
    assert json.loads(text)["errors"][0]["code"] == "UNAVAILABLE"
    assert requests_of(upstream, "PUT") == []


async def test_a_registry_silent_during_the_check_refuses_the_push(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    released = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await released.wait()
        return web.Response(status=404)

    upstream.handlers["/v2/apps/web/manifests/v1"] = silent
    proxy = await make_proxy(GUARDS + "timeouts:\n  read: 0.3\n")
    try:
        status, _, _ = await put(proxy, "/v2/apps/web/manifests/v1", manifest(1))
    finally:
        released.set()
    assert status == 503
    assert requests_of(upstream, "PUT") == []


async def test_an_unreachable_registry_refuses_the_push(make_proxy: ProxyFactory) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy(GUARDS, upstream_url=closed)
    status, _, text = await put(proxy, "/v2/apps/web/manifests/v1", manifest(1))
    assert status == 503
    assert "registry unavailable for the tag check" in error_message(text)


# --------------------------------------------------------------------------------------------
# Deletes
# --------------------------------------------------------------------------------------------


async def test_a_delete_by_digest_of_what_an_immutable_tag_names_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream)
    named = repo.add("v1", manifest(1))
    child = repo.add(None, manifest(3))
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": child, "size": 9}]})
    repo.add("v2", index.encode(), INDEX)
    loose = repo.add("sha-1", manifest(4))
    repo.serve("v1", "v2", "sha-1", *repo.manifests)
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{named}")
    assert status == 403
    assert error_message(text) == f"tag v1 is immutable (rule {RULE}): it names {named}"
    status, text = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{child}")
    assert status == 403
    assert error_message(text) == f"tag v2 is immutable (rule {RULE}): its index holds {child}"
    assert requests_of(upstream, "DELETE") == []
    status, _ = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{loose}")
    assert status == 202
    assert requests_of(upstream, "DELETE") == [f"/v2/apps/web/manifests/{loose}"]
    assert "/v2/apps/web/manifests/sha-1" not in requests_of(upstream, "HEAD")  # not guarded


def index_of(*entries: tuple[str, str]) -> bytes:
    """An OCI index holding these (digest, media type) entries."""
    manifests = [{"mediaType": kind, "digest": digest, "size": 9} for digest, kind in entries]
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}).encode()


async def test_a_delete_by_digest_of_what_a_nested_index_holds_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream)
    leaf = repo.add(None, manifest(5))
    inner = repo.add(None, index_of((leaf, OCI)), INDEX)
    repo.add("v3", index_of((inner, INDEX)), INDEX)  # an index of an index (the registry takes it)
    loose = repo.add("sha-2", manifest(6))
    repo.serve("v3", *repo.manifests)
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{leaf}")
    assert status == 403
    assert error_message(text) == f"tag v3 is immutable (rule {RULE}): its index holds {leaf}"
    assert requests_of(upstream, "DELETE") == []
    assert (await call(proxy, "DELETE", f"/v2/apps/web/manifests/{loose}"))[0] == 202


async def test_indexes_nested_without_end_refuse_a_delete(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream)
    held = repo.add(None, manifest(7))
    for _ in range(manifests.MAX_NESTED + 1):
        held = repo.add(None, index_of((held, INDEX)), INDEX)
    repo.add("v5", index_of((held, INDEX)), INDEX)
    loose = repo.add("sha-3", manifest(8))
    repo.serve("v5", loose, *repo.manifests)
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{loose}")
    assert status == 403
    assert error_message(text) == (
        f"tag v5 is immutable (rule {RULE}): its index nests over {manifests.MAX_NESTED}"
        f" manifests to look into, so it may hold {loose}"
    )
    assert requests_of(upstream, "DELETE") == []


async def test_the_manifests_one_check_fetches_are_bounded(
    make_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifests, "MAX_FETCHES", 3)
    repo = Repository(upstream)
    leaves = [(repo.add(None, manifest(20 + n)), OCI) for n in range(4)]
    repo.add("v6", index_of(*leaves), INDEX)
    repo.serve("v6", *repo.manifests)
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", "/v2/apps/web/manifests/sha256:" + "2" * 64)
    assert (status, error_message(text)) == (
        403,
        "over 3 manifests to look into in apps/web: deletes are refused",
    )
    assert len(requests_of(upstream, "GET")) == 1 + 3  # the tag list, then three manifests
    assert requests_of(upstream, "DELETE") == []


async def test_every_page_of_tags_is_read_before_a_delete(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    repo = Repository(upstream)
    named = repo.add("v9", manifest(9))
    repo.serve("v9", named)

    async def paged(request: web.Request) -> web.StreamResponse:
        if "last" not in request.query:
            link = '</v2/apps/web/tags/list?n=1&last=a>; rel="next"'
            return web.json_response({"tags": ["a"]}, headers={"Link": link})
        return web.json_response({"tags": ["v9"]})

    upstream.handlers["/v2/apps/web/tags/list"] = paged
    proxy = await make_proxy(GUARDS)
    status, _ = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{named}")
    assert status == 403
    assert requests_of(upstream, "GET") == [
        "/v2/apps/web/tags/list",
        "/v2/apps/web/tags/list?n=1&last=a",
    ]


async def test_a_tag_list_arriving_in_pieces_is_read_whole(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """#23: about 1,000 tags, sent in pieces: every piece is read (a bounded read that took
    the first piece alone made the list "not a tag list" and the delete a 503)."""
    repo = Repository(upstream)
    named = repo.add("v1", manifest(1))
    repo.serve("v1", *repo.manifests)
    tags = ["v1", *(f"sha-{n:04d}" for n in range(1000))]

    async def in_pieces(request: web.Request) -> web.StreamResponse:
        body = json.dumps({"name": "apps/web", "tags": tags}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 4096):
            await response.write(body[start : start + 4096])
            await asyncio.sleep(0.005)  # each piece its own read on the proxy's side
        await response.write_eof()
        return response

    upstream.handlers["/v2/apps/web/tags/list"] = in_pieces
    upstream.streaming.add("/v2/apps/web/tags/list")
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{named}")
    assert (status, error_message(text)) == (
        403,
        f"tag v1 is immutable (rule {RULE}): it names {named}",
    )


async def test_what_a_manifest_holds_is_read_from_its_bytes_once(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """An entry is looked into whatever its descriptor says (#23 finding 3), and what a
    manifest holds is remembered by digest: the next delete asks only for the tag."""
    repo = Repository(upstream)
    leaf = repo.add(None, manifest(5))
    inner = repo.add(None, index_of((leaf, OCI)), INDEX)
    repo.add("v3", index_of((inner, OCI)), INDEX)  # I2 listed as an image manifest
    loose = repo.add("sha-2", manifest(6))
    repo.serve("v3", *repo.manifests)
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", f"/v2/apps/web/manifests/{leaf}")
    assert (status, error_message(text)) == (
        403,
        f"tag v3 is immutable (rule {RULE}): its index holds {leaf}",
    )
    fetched = requests_of(upstream, "GET")
    assert (await call(proxy, "DELETE", f"/v2/apps/web/manifests/{loose}"))[0] == 202
    assert requests_of(upstream, "GET")[len(fetched) :] == ["/v2/apps/web/tags/list"]


async def test_too_many_guarded_tags_refuse_a_delete(
    make_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tagguard, "MAX_GUARDED", 2)
    repo = Repository(upstream)
    for n in range(3):
        repo.add(f"v{n}", manifest(n))
    repo.add("sha-1", manifest(9))
    repo.serve()
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", "/v2/apps/web/manifests/sha256:" + "1" * 64)
    assert status == 403
    assert error_message(text) == "over 2 guarded tags in apps/web: deletes are refused"
    assert [r.method for r in upstream.requests] == ["GET"]  # the list, and nothing more


async def test_endless_tag_pages_refuse_a_delete(
    make_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifests, "MAX_TAG_PAGES", 3)

    async def endless(request: web.Request) -> web.StreamResponse:
        last = int(request.query.get("last", "0"))
        link = f'</v2/apps/web/tags/list?last={last + 1}>; rel="next"'
        return web.json_response({"tags": [f"t{last}"]}, headers={"Link": link})

    upstream.handlers["/v2/apps/web/tags/list"] = endless
    proxy = await make_proxy(GUARDS)
    status, _ = await call(proxy, "DELETE", "/v2/apps/web/manifests/sha256:" + "1" * 64)
    assert status == 503
    assert len(requests_of(upstream, "GET")) == 3
    assert requests_of(upstream, "DELETE") == []


async def _odd_tags(request: web.Request) -> web.StreamResponse:
    return web.json_response({"tags": ["v1", "v2?x=1"]})


async def _not_json(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>")


@pytest.mark.parametrize(
    "answer", [_status_500, _reset, _odd_tags, _not_json], ids=["500", "reset", "odd", "html"]
)
async def test_a_delete_is_refused_when_the_tags_cannot_be_listed(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> None:
    upstream.handlers["/v2/apps/web/tags/list"] = answer
    proxy = await make_proxy(GUARDS)
    status, _ = await call(proxy, "DELETE", "/v2/apps/web/manifests/sha256:" + "1" * 64)
    assert status == 503
    assert requests_of(upstream, "DELETE") == []


async def test_a_delete_in_an_unknown_repository_goes_on(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def unknown(request: web.Request) -> web.StreamResponse:
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)

    upstream.handlers["/v2/apps/new/tags/list"] = unknown
    proxy = await make_proxy(GUARDS)
    path = "/v2/apps/new/manifests/sha256:" + "1" * 64
    assert (await call(proxy, "DELETE", path))[0] == 200  # the fake's default answer
    assert requests_of(upstream, "DELETE") == [path]


DIGEST = "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/v2/apps/web/manifests/v1", f"tag v1 is immutable (rule {RULE}): it is never deleted"),
        (f"/v2/apps/web/blobs/{DIGEST}", "blobs of apps/web are never deleted"),
        (f"/v2/base/os/manifests/{DIGEST}", "manifests of base/os are never deleted"),
        ("/v2/base/os/manifests/latest", "deleting tag latest of base/os is refused"),
        (f"/v2/base/os/blobs/{DIGEST}", "blobs of base/os are never deleted"),
        ("/v2/scratch/x/manifests/t", "deleting tag t of scratch/x is refused"),
        (f"/v2/scratch/x/manifests/{DIGEST}", None),
        (f"/v2/scratch/x/blobs/{DIGEST}", None),
        ("/v2/other/x/manifests/v1", None),
    ],
)
async def test_protected_deletes_regardless_of_delete_rights(
    make_proxy: ProxyFactory, upstream: FakeUpstream, path: str, refused: str | None
) -> None:
    proxy = await make_proxy(GUARDS)
    status, text = await call(proxy, "DELETE", path)
    if refused is None:
        assert status == 200
        assert requests_of(upstream, "DELETE") == [path]
    else:
        assert status == 403 and refused in error_message(text)
        assert upstream.requests == []  # refused without asking


# --------------------------------------------------------------------------------------------
# Tag rules in the ACL, and tag query parameters
# --------------------------------------------------------------------------------------------

TAG_ACL = """acl:
  - groups: [readers]
    repositories: ["apps/**"]
    tags: ["sha-*"]
    actions: [pull, push]
  - repositories: ["apps/**"]
    tags: ["*"]
    actions: [pull]
  - groups: [readers]
    repositories: ["apps/**"]
    actions: [pull, push]
"""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", "/v2/apps/web/manifests/sha-1f", 200),
        ("PUT", "/v2/apps/web/manifests/v1", 403),
        ("DELETE", "/v2/apps/web/manifests/sha-1f", 403),
        ("PUT", f"/v2/apps/web/manifests/{DIGEST}", 200),
        ("POST", "/v2/apps/web/blobs/uploads/", 200),
        ("GET", "/v2/apps/web/manifests/v1", 200),
        ("GET", "/v2/apps/web/tags/list", 200),
    ],
)
async def test_tag_rules_on_the_request_path(
    make_proxy: ProxyFactory, upstream: FakeUpstream, method: str, path: str, status: int
) -> None:
    proxy = await make_proxy(TAG_ACL)
    assert (await call(proxy, method, path, "other"))[0] == status
    assert [r.path_qs for r in upstream.requests] == ([path] if status == 200 else [])


async def test_tag_query_parameters_are_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy(TAG_ACL)
    status, _, text = await put(proxy, f"/v2/apps/web/manifests/{DIGEST}?tag=v1", b"{}", "other")
    assert status == 400 and "tag query parameters" in error_message(text)
    assert upstream.requests == []


# --------------------------------------------------------------------------------------------
# Two workers
# --------------------------------------------------------------------------------------------


async def _raw_put(connection: KeptConnection, path: str, body: bytes) -> int:
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {basic('push', USERS['push'])}"
        f"\r\nContent-Type: {OCI}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    connection.writer.write(head.encode() + body)
    answer = (await connection.reader.readuntil(b"\r\n\r\n")).decode()
    length = int(answer.lower().split("content-length:")[1].split("\r\n")[0])
    await connection.reader.readexactly(length)
    return int(answer.split()[1])


@pytest.mark.parametrize("served", ["workers: 2\n" + GUARDS], indirect=True)
async def test_two_workers_pushing_one_new_tag_cannot_both_win(
    served: Served, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """Each worker holds one of the connections. The registry is slow to store a manifest;
    without a lock shared by the workers both would find the tag absent and both would win."""
    repo = Repository(upstream)

    async def slow() -> None:
        await asyncio.sleep(0.3)  # widens the window a missing lock would leave open

    repo.gate = slow
    repo.serve("v1")
    connections = await one_connection_per_worker(served, tls)
    bodies = [manifest(1), manifest(2)]
    statuses = await asyncio.gather(
        *(
            _raw_put(c, "/v2/apps/web/manifests/v1", b)
            for c, b in zip(connections, bodies, strict=True)
        )
    )
    for connection in connections:
        await connection.close()
    assert sorted(statuses) == [201, 403]
    assert [r.method for r in upstream.requests].count("PUT") == 1


def _sharing_a_stripe(upstream: str, repository: str) -> str:
    """A repository whose lock name fell on the same one of 256 lock files as `repository`'s
    under the striped locks this replaces (so the test below fails where that is so)."""

    def stripe(name: str) -> int:
        lock = f"tags {upstream} {name}".encode()
        return int.from_bytes(hashlib.sha256(lock).digest()[:2]) % 256

    return next(
        f"apps/other{n}" for n in range(100_000) if stripe(f"apps/other{n}") == stripe(repository)
    )


@pytest.mark.parametrize(
    "served", ["workers: 2\nlimits:\n  upstream_wait: 2\n" + GUARDS], indirect=True
)
async def test_one_repositorys_long_check_never_holds_up_anothers(
    served: Served, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """#23 finding 4: while a delete by digest in one repository is being checked (its tag
    list is slow to come), a push of an immutable tag in another repository, in the other
    worker, goes through at once: each repository's lock is its own."""
    slow = _sharing_a_stripe(upstream.url, "apps/web")
    listing, release = asyncio.Event(), asyncio.Event()

    async def hanging_tags(request: web.Request) -> web.StreamResponse:
        listing.set()
        await release.wait()
        return web.json_response({"name": slow, "tags": []})

    upstream.handlers[f"/v2/{slow}/tags/list"] = hanging_tags
    Repository(upstream).serve("v1")
    deleting, pushing = await one_connection_per_worker(served, tls)
    head = (
        f"DELETE /v2/{slow}/manifests/sha256:{'1' * 64} HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: {basic('push', USERS['push'])}\r\n\r\n"
    )
    deleting.writer.write(head.encode())
    await asyncio.wait_for(listing.wait(), 10)  # the check holds its repository's lock now
    status = await _raw_put(pushing, "/v2/apps/web/manifests/v1", manifest(1))
    release.set()
    assert status == 201
    for connection in (deleting, pushing):
        await connection.close()


# --------------------------------------------------------------------------------------------
# regproxy explain --tag
# --------------------------------------------------------------------------------------------


def test_explain_takes_a_tag_and_names_the_deciding_rule(tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text(htpasswd_text({"robot": "pw", "rel": "pw", "root": "pw"}))
    (tmp_path / "groups").write_text("ci: robot\nrelease: rel\nadmin: root\n")
    acl = ROOT / "conf" / "acl" / "release-tags.yaml"
    config = tmp_path / "regproxy.yaml"
    config.write_text(f"acl: {acl}\nhtpasswd: htpasswd\ngroups: groups\n")

    def explain(*args: str) -> subprocess.CompletedProcess[str]:
        return regproxy("explain", "-c", str(config), *args, cwd=tmp_path)

    ci_sha = explain("robot", "push", "apps/web", "--tag", "sha-4e2a")
    assert ci_sha.returncode == 0
    assert ci_sha.stdout.startswith(
        f"ALLOW robot push apps/web:sha-4e2a\n  decided by: rule {acl}:12\n"
    )
    ci_v = explain("robot", "push", "apps/web", "--tag", "v1.2.0")
    assert ci_v.returncode == 3
    assert ci_v.stdout.startswith(f"DENY robot push apps/web:v1.2.0\n  decided by: rule {acl}:16\n")
    release = explain("rel", "push", "apps/web", "--tag", "v1.2.0")
    assert release.returncode == 0
    assert f"  immutable: immutable_tags rule {acl}:28: a push changing v1.2.0 is refused\n" in (
        release.stdout
    )
    delete = explain("root", "delete", "apps/web", "--tag", "v1.2.0")
    assert delete.returncode == 3
    assert delete.stdout.splitlines()[:3] == [
        "DENY root delete apps/web:v1.2.0",
        f"  decided by: immutable_tags rule {acl}:28",
        f"  acl: rule {acl}:6 allows it",
    ]
    by_digest = explain("root", "delete", "apps/web")
    assert by_digest.returncode == 0 and "  checked: a delete by digest is refused" in (
        by_digest.stdout
    )
    base = explain("root", "delete", "base/debian")
    assert base.returncode == 3
    assert f"  decided by: protected_deletes rule {acl}:34" in base.stdout
    bad = explain("root", "push", "apps/web", "--tag", "a:b")
    assert bad.returncode == 2 and "not a valid tag" in bad.stderr
