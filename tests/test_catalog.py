"""The filtered catalog on the request path (proxy.upstream.catalog with the listings guard):
the registry's names read once for many pages and many callers, a repository pushed through
the proxy listed at once, and an ACL edit applied to the next page."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FakeUpstream, ProxyFactory, replace_file, until
from tests.test_authz import auth, paginating_catalog, walk_catalog

ACL = "acl:\n  - users: [pull]\n    repositories: ['${user}/**', 'library/**']\n    actions: '*'\n"


def catalog_reads(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path_qs.startswith("/v2/_catalog"))


async def test_pages_and_callers_share_one_read_of_the_registry(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    names = [f"library/lib{i:04d}" for i in range(2_500)] + ["other/x", "pull/app"]
    upstream.handlers["/v2/_catalog"] = paginating_catalog(names)  # type: ignore[assignment]
    proxy = await make_proxy(ACL)
    pages = await walk_catalog(proxy, proxy.url + "/v2/_catalog?n=1000", auth("pull"))
    assert [r for page in pages for r in page] == sorted(n for n in names if n != "other/x")
    assert [len(page) for page in pages] == [1000, 1000, 501]
    reads = catalog_reads(upstream)
    assert reads == 3  # the registry's three pages, once, for the three pages listed
    await walk_catalog(proxy, proxy.url + "/v2/_catalog?n=1000", auth("pull"))
    assert catalog_reads(upstream) == reads


async def test_a_repository_pushed_through_the_proxy_is_listed_at_once(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    names = ["library/base", "pull/app"]
    upstream.handlers["/v2/_catalog"] = paginating_catalog(names)  # type: ignore[assignment]
    proxy = await make_proxy(ACL)
    assert await walk_catalog(proxy, proxy.url + "/v2/_catalog", auth("pull")) == [names]
    names.append("pull/new")  # what the registry lists once the push below is done
    async with proxy.session.put(
        proxy.url + "/v2/pull/new/manifests/1", data=b"{}", headers=auth("pull")
    ) as resp:
        assert resp.status == 200
    listed = await walk_catalog(proxy, proxy.url + "/v2/_catalog", auth("pull"))
    assert listed == [["library/base", "pull/app", "pull/new"]]


async def test_an_acl_edit_applies_to_the_next_page(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    names = ["library/base", "other/x", "pull/app"]
    upstream.handlers["/v2/_catalog"] = paginating_catalog(names)  # type: ignore[assignment]
    rules = tmp_path / "rules.yaml"
    rules.write_text(ACL)
    proxy = await make_proxy("acl: rules.yaml\n")
    assert await walk_catalog(proxy, proxy.url + "/v2/_catalog", auth("pull")) == [
        ["library/base", "pull/app"]
    ]
    replace_file(rules, ACL.replace("'library/**'", "'other/**'"))

    async def edited() -> bool:
        pages = await walk_catalog(proxy, proxy.url + "/v2/_catalog", auth("pull"))
        return pages == [["other/x", "pull/app"]]

    await until(edited)
