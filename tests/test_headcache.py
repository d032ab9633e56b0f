"""Blob existence checks answered from the cache (proxy.guards.headcache), against the fake
upstream."""

from __future__ import annotations

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import FakeUpstream, ProxyFactory, RunningProxy
from tests.conftest import UpstreamHandler as Handler

DIGEST = "sha256:" + "b" * 64
BLOB = f"/v2/app/blobs/{DIGEST}"


def blob_answer(cache_control: str | None = "max-age=31536000", status: int = 200) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            return web.Response(status=202)
        headers = {"Docker-Content-Digest": DIGEST, "Content-Type": "application/octet-stream"}
        if cache_control is not None:
            headers["Cache-Control"] = cache_control
        return web.Response(status=status, body=b"0123456789", headers=headers)

    return answer


async def head(
    proxy: RunningProxy, user: str | None = "pull", path: str = BLOB, **headers: str
) -> tuple[int, CIMultiDict[str]]:
    if user is not None:
        headers.update(proxy.auth(user))
    async with proxy.session.head(proxy.url + path, headers=headers) as resp:
        return resp.status, resp.headers.copy()


def upstream_heads(upstream: FakeUpstream) -> list[str]:
    return [r.path_qs for r in upstream.requests if r.method == "HEAD"]


async def test_repeated_check_answered_locally_with_the_same_headers(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.handlers[BLOB] = blob_answer()
    proxy = await make_proxy()
    first_status, first = await head(proxy)
    second_status, second = await head(proxy)
    assert first_status == second_status == 200
    assert upstream_heads(upstream) == [BLOB]  # the second never left the proxy
    for name in ("Content-Length", "Docker-Content-Digest", "Content-Type", "Cache-Control"):
        assert second[name] == first[name]
    assert second["Content-Length"] == "10"
    assert second.getall("Docker-Distribution-Api-Version") == ["registry/2.0"]
    assert second["Age"] == "0" and "Date" in second and "Age" not in first


async def test_authorization_comes_before_the_cache(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.handlers[BLOB] = blob_answer()
    acl = "acl:\n  - {users: [pull], repositories: [app], actions: [pull]}\n"
    proxy = await make_proxy(extra_yaml=acl)
    assert (await head(proxy))[0] == 200
    assert (await head(proxy, user=None))[0] == 401
    assert (await head(proxy, user="other"))[0] == 403
    assert (await head(proxy, user="pull"))[0] == 200
    assert upstream_heads(upstream) == [BLOB]


@pytest.mark.parametrize(
    ("cache_control", "status"),
    [(None, 200), ("no-store", 200), ("max-age=0", 200), ("max-age=60", 404)],
)
async def test_not_cacheable_answers_go_upstream_every_time(
    make_proxy: ProxyFactory, upstream: FakeUpstream, cache_control: str | None, status: int
) -> None:
    upstream.handlers[BLOB] = blob_answer(cache_control, status)
    proxy = await make_proxy()
    assert [(await head(proxy))[0] for _ in range(3)] == [status] * 3
    assert upstream_heads(upstream) == [BLOB] * 3


async def test_ttl_zero_turns_it_off(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.handlers[BLOB] = blob_answer()
    proxy = await make_proxy(extra_yaml="cache:\n  ttl: 0\n")
    for _ in range(3):
        assert (await head(proxy))[0] == 200
    assert upstream_heads(upstream) == [BLOB] * 3


async def test_delete_through_the_proxy_drops_the_entry(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.handlers[BLOB] = blob_answer()
    proxy = await make_proxy()
    await head(proxy)
    await head(proxy)
    async with proxy.session.delete(proxy.url + BLOB, headers=proxy.auth("push")) as resp:
        assert resp.status == 202
    upstream.handlers[BLOB] = blob_answer(status=404)
    assert (await head(proxy))[0] == 404
    assert upstream_heads(upstream) == [BLOB, BLOB]


async def test_other_repository_conditions_and_queries_are_asked_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    other = BLOB.replace("/app/", "/other/")
    upstream.handlers[BLOB] = upstream.handlers[other] = blob_answer()
    proxy = await make_proxy()
    await head(proxy)
    await head(proxy, path=other)
    await head(proxy, **{"If-None-Match": f'"{DIGEST}"'})
    await head(proxy, path=BLOB + "?x=1")
    await head(proxy)
    assert upstream_heads(upstream) == [BLOB, other, BLOB, BLOB + "?x=1"]
