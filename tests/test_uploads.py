"""Uploads bound to whoever started them, through the real request path: another identity with
push rights gets 403 on every method and nothing reaches the registry; the owner goes on; the
binding holds across the workers of one server and across replicas sharing a secret_file."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from aiohttp import web

from proxy.authn.robotfile import Robot, derive, entry_text, new_secret, secret_hash
from proxy.guards.uploads import PARAM
from tests.conftest import (
    SECRET,
    USERS,
    FakeUpstream,
    KeptConnection,
    ProxyFactory,
    RunningProxy,
    Served,
    TlsPair,
    basic,
    one_connection_per_worker,
)

ACL = """acl:
  - groups: [pusher, readers]
    actions: "*"
"""
SESSION = "/v2/team/app/blobs/uploads/5d0f-1"
DIGEST = "sha256:" + "c" * 64


def registry_like(upstream: FakeUpstream) -> None:
    """Answers uploads as a registry does: 202 with the session's Location (upstream URL)."""

    async def start(_: web.Request) -> web.StreamResponse:
        headers = {"Location": f"{upstream.url}{SESSION}?_state=s0", "Range": "0-0"}
        return web.Response(status=202, headers=headers)

    async def session(request: web.Request) -> web.StreamResponse:
        if request.method == "PUT":
            return web.Response(status=201, headers={"Location": f"/v2/team/app/blobs/{DIGEST}"})
        if request.method == "DELETE":
            return web.Response(status=204)
        return web.Response(status=202, headers={"Location": f"{SESSION}?_state=s1"})

    upstream.handlers["/v2/team/app/blobs/uploads/"] = start
    upstream.handlers[SESSION] = session


async def start_upload(proxy: RunningProxy, user: str) -> str:
    async with proxy.session.post(
        proxy.url + "/v2/team/app/blobs/uploads/", headers=proxy.auth(user)
    ) as resp:
        assert resp.status == 202
        return resp.headers["Location"]


async def test_another_pusher_cannot_touch_the_upload(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    registry_like(upstream)
    proxy = await make_proxy(ACL)
    location = await start_upload(proxy, "push")
    assert f"{SESSION}?_state=s0&{PARAM}=" in location
    before = len(upstream.requests)
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        url = location + (f"&digest={DIGEST}" if method == "PUT" else "")
        async with proxy.session.request(method, url, headers=proxy.auth("other")) as resp:
            assert resp.status == 403, method
            assert (await resp.json())["errors"][0]["code"] == "DENIED"
    async with proxy.session.patch(
        location.split("?")[0], headers=proxy.auth("other")
    ) as resp:  # without any binding
        assert resp.status == 403
    assert len(upstream.requests) == before  # nothing reached the registry
    # The upload is intact: its owner goes on with the Location it was given.
    async with proxy.session.patch(location, data=b"chunk", headers=proxy.auth("push")) as resp:
        assert resp.status == 202
        following = resp.headers["Location"]
    assert following.startswith(f"{SESSION}?_state=s1&{PARAM}=")
    async with proxy.session.put(
        proxy.url + following + f"&digest={DIGEST}", headers=proxy.auth("push")
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == f"/v2/team/app/blobs/{DIGEST}"  # not an upload
    forwarded = [r.path_qs for r in upstream.requests[before:]]
    assert forwarded == [f"{SESSION}?_state=s0", f"{SESSION}?_state=s1&digest={DIGEST}"]


async def test_a_robot_and_its_owner_are_two_identities(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    registry_like(upstream)
    (tmp_path / "secret").write_text(SECRET + "\n")
    secret = new_secret()
    key = derive(SECRET.encode(), "robots")
    ci = Robot("ci", secret_hash(key, secret), ("team/**",), frozenset({"pull", "push"}),
               time.time() + 3600, "push")  # fmt: skip
    (tmp_path / "robots.yaml").write_text(entry_text(ci))
    proxy = await make_proxy(ACL + "robots: robots.yaml\nsecret_file: secret\n")
    as_robot = {"Authorization": basic("robot$ci", secret)}
    async with proxy.session.post(
        proxy.url + "/v2/team/app/blobs/uploads/", headers=as_robot
    ) as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    async with proxy.session.get(location, headers=proxy.auth("push")) as resp:
        assert resp.status == 403  # its owner did not start it
    async with proxy.session.get(location, headers=as_robot) as resp:
        assert resp.status == 202


@pytest.mark.parametrize("same_secret", [True, False])
async def test_replicas_sharing_a_secret_file_accept_each_others_uploads(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path, same_secret: bool
) -> None:
    registry_like(upstream)
    (tmp_path / "secret").write_text(SECRET + "\n")
    first = await make_proxy(ACL + "secret_file: secret\n")
    if not same_secret:
        (tmp_path / "secret").write_text("another-" + SECRET + "\n")
    second = await make_proxy(ACL + "secret_file: secret\n")
    location = await start_upload(first, "push")
    elsewhere = second.url + location.removeprefix(first.url)
    async with second.session.patch(elsewhere, headers=second.auth("push")) as resp:
        assert resp.status == (202 if same_secret else 403)


@pytest.mark.parametrize("served", ["workers: 2\n" + ACL], indirect=True)
async def test_an_upload_started_through_one_worker_continues_through_the_other(
    served: Served, upstream: FakeUpstream, tls: TlsPair
) -> None:
    """No secret_file: worker 0 makes the key and shares it with the others."""
    registry_like(upstream)
    first, second = await one_connection_per_worker(served, tls)
    push, other = basic("push", USERS["push"]), basic("other", USERS["other"])
    started, location = await exchange(first, "POST", "/v2/team/app/blobs/uploads/", push)
    path = re.sub(r"^https://[^/]+", "", location)
    assert started == 202 and PARAM in path
    assert (await exchange(second, "GET", path, push))[0] == 202
    assert (await exchange(second, "GET", path, other))[0] == 403
    assert (await exchange(first, "GET", path, other))[0] == 403
    assert (await exchange(second, "DELETE", path, push))[0] == 204
    for connection in (first, second):
        await connection.close()


async def exchange(
    connection: KeptConnection, method: str, path: str, authorization: str
) -> tuple[int, str]:
    """A bodiless request on a kept connection: the answer's status and Location."""
    connection.writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {authorization}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    head = (await connection.reader.readuntil(b"\r\n\r\n")).decode()
    length = re.search(r"(?im)^content-length: *(\d+)", head)
    await connection.reader.readexactly(int(length.group(1)) if length else 0)
    location = re.search(r"(?im)^location: *(\S+)", head)
    return int(head.split()[1]), location.group(1) if location else ""
