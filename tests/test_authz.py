"""Authorization on the request path: namespaces, anonymous pull, mounts, the filtered catalog
with working pagination, per-rule upstreams, and live ACL edits."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    basic,
    htpasswd_text,
    regproxy,
    replace_file,
    until,
)

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "f" * 64
NAMESPACES = """acl:
  - users: [pull]
    repositories: ["${user}/**"]
    actions: "*"
  - anonymous: true
    repositories: ["public/**"]
    actions: [pull]
  - groups: [pusher]
    actions: "*"
  - repositories: ["library/**", "public/**"]
    actions: [pull]
"""


def auth(user: str) -> dict[str, str]:
    return {"Authorization": basic(user, USERS[user])}


@pytest.mark.parametrize(
    ("user", "method", "path", "status"),
    [
        ("pull", "PUT", "/v2/pull/app/manifests/1", 200),
        ("pull", "DELETE", "/v2/pull/team/app/manifests/1", 200),
        ("pull", "PUT", "/v2/other/app/manifests/1", 403),
        ("pull", "GET", "/v2/other/app/manifests/1", 403),
        ("pull", "GET", "/v2/library/app/tags/list", 200),
        ("other", "GET", f"/v2/library/app/referrers/{DIGEST}", 200),
        ("other", "GET", "/v2/pull/app/tags/list", 403),
        ("other", "PUT", "/v2/library/app/manifests/1", 403),
        ("push", "DELETE", "/v2/pull/app/manifests/1", 200),
        (None, "GET", "/v2/", 401),  # the ping always challenges: clients learn to log in
        (None, "GET", "/v2/public/base/manifests/1", 200),
        (None, "HEAD", f"/v2/public/base/blobs/{DIGEST}", 200),
        (None, "PUT", "/v2/public/base/manifests/1", 401),
        (None, "GET", "/v2/library/app/manifests/1", 401),
    ],
)
async def test_namespace_rules(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    user: str | None,
    method: str,
    path: str,
    status: int,
) -> None:
    proxy = await make_proxy(NAMESPACES)
    headers = auth(user) if user else {}
    async with proxy.session.request(method, proxy.url + path, headers=headers) as resp:
        assert resp.status == status
        if status == 401:
            assert "WWW-Authenticate" in resp.headers
    assert [r.path_qs for r in upstream.requests] == ([path] if status == 200 else [])


@pytest.mark.parametrize(
    ("query", "forwarded_query"),
    [
        (f"mount={DIGEST}&from=pull/base", f"mount={DIGEST}&from=pull/base"),
        (f"mount={DIGEST}&from=library/base", f"mount={DIGEST}&from=library/base"),
        (f"mount={DIGEST}&from=secret/base", ""),
        (f"mount={DIGEST}&from=secret%2Fbase", ""),  # decoded like the registry: secret/base
        # No usable source: the spec's ordinary upload, never a mount the registry could
        # resolve from anywhere (`from` is optional to it), nothing malformed forwarded.
        (f"mount={DIGEST}", ""),
        (f"mount={DIGEST}&from=", ""),
        (f"mount={DIGEST}&from=..%2Fsecret", ""),
        (f"digest={DIGEST}&mount={DIGEST}&from=Secret", f"digest={DIGEST}"),
        ("mount=sha256:abc&from=pull/base", ""),
    ],
)
async def test_mount_needs_pull_on_the_source(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    query: str,
    forwarded_query: str,
) -> None:
    caplog.set_level(logging.INFO, logger="regproxy")
    proxy = await make_proxy(NAMESPACES)
    path = "/v2/pull/app/blobs/uploads/"
    async with proxy.session.post(proxy.url + f"{path}?{query}", headers=auth("pull")) as resp:
        assert resp.status == 200
    (seen,) = upstream.requests
    assert seen.path_qs == (f"{path}?{forwarded_query}" if forwarded_query else path)
    assert ("dropped for pull" in caplog.text) is (forwarded_query != query)


def paginating_catalog(repositories: list[str]) -> web.Response | object:
    """A registry-like `_catalog`: sorted, `n` and `last`, `Link` when more remain."""

    async def handler(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "100"))
        last = request.query.get("last", "")
        after = [r for r in sorted(repositories) if r > last]
        page = after[:n]
        headers = {}
        if len(after) > n:
            headers["Link"] = f'</v2/_catalog?last={page[-1]}&n={n}>; rel="next"'
        return web.json_response({"repositories": page}, headers=headers)

    return handler


async def walk_catalog(proxy: object, url: str, headers: dict[str, str]) -> list[list[str]]:
    pages = []
    while url:
        async with proxy.session.get(url, headers=headers) as resp:  # type: ignore[attr-defined]
            assert resp.status == 200
            assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
            pages.append((await resp.json())["repositories"])
            link = resp.headers.get("Link")
        url = proxy.url + re.match(r"<([^>]+)>", link).group(1) if link else ""  # type: ignore[attr-defined,union-attr]
    return pages


async def test_catalog_lists_only_pullable_repositories_with_pagination(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    everything = sorted(
        [f"library/lib{i:03d}" for i in range(1500)]
        + [f"other/app{i}" for i in range(700)]
        + [f"pull/mine{i}" for i in range(7)]
        + ["public/base"]
    )
    upstream.handlers["/v2/_catalog"] = paginating_catalog(everything)  # type: ignore[assignment]
    proxy = await make_proxy(NAMESPACES)
    visible = [r for r in everything if not r.startswith("other/")]
    pages = await walk_catalog(proxy, proxy.url + "/v2/_catalog?n=400", auth("pull"))
    assert [r for page in pages for r in page] == visible
    assert all(len(page) == 400 for page in pages[:-1]) and 0 < len(pages[-1]) <= 400
    default = await walk_catalog(proxy, proxy.url + "/v2/_catalog", auth("other"))
    assert len(default[0]) == 100
    assert [r for page in default for r in page] == [
        r for r in everything if r.startswith(("library/", "public/"))
    ]
    anonymous = await walk_catalog(proxy, proxy.url + "/v2/_catalog", {})
    assert anonymous == [["public/base"]]


@pytest.mark.parametrize("query", ["n=0", "n=1001", "n=abc", "last=..%2Fx"])
async def test_catalog_bad_paging_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream, query: str
) -> None:
    proxy = await make_proxy(NAMESPACES)
    async with proxy.session.get(proxy.url + f"/v2/_catalog?{query}", headers=auth("pull")) as r:
        assert r.status == 400
    assert upstream.requests == []


async def test_rules_route_to_their_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    team = FakeUpstream()
    runner = web.ServerRunner(web.Server(team.handle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    team.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        acl = (
            "acl:\n  - groups: [pusher]\n    repositories: ['team/**']\n    actions: '*'\n"
            f"    upstream: {team.url}\n  - actions: [pull]\n"
        )
        proxy = await make_proxy(acl)
        for path in ("/v2/team/app/manifests/1", "/v2/main/app/manifests/1"):
            async with proxy.session.get(proxy.url + path, headers=auth("push")) as resp:
                assert resp.status == 200
        assert [r.path_qs for r in team.requests] == ["/v2/team/app/manifests/1"]
        assert [r.path_qs for r in upstream.requests] == ["/v2/main/app/manifests/1"]
    finally:
        await runner.cleanup()


async def test_network_rules(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    acl = (
        "acl:\n  - networks: [10.0.0.0/8]\n    actions: '*'\n"
        "  - networks: [127.0.0.0/8, '::1/128']\n    actions: [pull]\n"
    )
    proxy = await make_proxy(acl)
    async with proxy.session.get(proxy.url + "/v2/a/tags/list", headers=auth("push")) as resp:
        assert resp.status == 200
    async with proxy.session.put(proxy.url + "/v2/a/manifests/1", headers=auth("push")) as resp:
        assert resp.status == 403


async def test_ipv4_network_rules_hold_on_an_ipv6_listener(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """A listener on [::] sees an IPv4 client as ::ffff:a.b.c.d: an IPv4 network refusing it
    must still match (bound to the mapped loopback address here, to stay on loopback)."""
    acl = "acl:\n  - networks: [127.0.0.0/8]\n    actions: []\n  - actions: [pull]\n"
    proxy = await make_proxy(acl, host="::ffff:127.0.0.1")
    async with proxy.session.get(proxy.url + "/v2/a/tags/list", headers=auth("push")) as resp:
        assert resp.status == 403
    assert upstream.requests == []


async def status(proxy: object, method: str, path: str, user: str) -> int:
    async with proxy.session.request(  # type: ignore[attr-defined]
        method,
        proxy.url + path,
        headers=auth(user),  # type: ignore[attr-defined]
    ) as resp:
        return int(resp.status)


async def test_live_acl_file(
    make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="regproxy.reload")
    rules = tmp_path / "rules.yaml"
    rules.write_text("acl:\n  - actions: [pull]\n")
    proxy = await make_proxy("acl: rules.yaml\n")
    assert await status(proxy, "PUT", "/v2/x/manifests/1", "pull") == 403
    replace_file(rules, "acl:\n  - users: [pull]\n    actions: '*'\n")

    async def allowed() -> bool:
        return await status(proxy, "PUT", "/v2/x/manifests/1", "pull") == 200

    await until(allowed)
    replace_file(rules, "acl:\n  - users: [pull]\n    actions: [fly]\n")

    async def logged() -> bool:
        return "rules.yaml:3: actions: unknown action(s) ['fly']" in caplog.text

    await until(logged)  # the broken edit was read and refused
    assert await status(proxy, "PUT", "/v2/x/manifests/1", "pull") == 200  # last good ACL


def test_explain_names_the_deciding_rule(tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text(htpasswd_text({"pat": "pw"}))
    (tmp_path / "groups").write_text("pusher: pat\n")
    acl = ROOT / "conf" / "acl" / "namespaces.yaml"
    config = tmp_path / "regproxy.yaml"
    config.write_text(f"acl: {acl}\nhtpasswd: htpasswd\ngroups: groups\n")
    allowed = regproxy("explain", "-c", str(config), "alice", "push", "alice/app", cwd=tmp_path)
    assert allowed.returncode == 0
    assert allowed.stdout.splitlines()[:2] == [
        "ALLOW alice push alice/app",
        f"  decided by: rule {acl}:6",
    ]
    denied = regproxy("explain", "-c", str(config), "alice", "push", "library/x", cwd=tmp_path)
    assert denied.returncode == 3
    assert f"DENY alice push library/x\n  decided by: rule {acl}:11" in denied.stdout
    nobody = regproxy("explain", "-c", str(config), "-", "pull", "library/x", cwd=tmp_path)
    assert nobody.returncode == 3 and "no rule matched (deny by default)" in nobody.stdout
    bad = regproxy("explain", "-c", str(config), "alice", "pull", "Bad/Name", cwd=tmp_path)
    assert bad.returncode == 2 and "not a valid repository name" in bad.stderr
