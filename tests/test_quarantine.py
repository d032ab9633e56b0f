"""Quarantine on the request path, against the recording fake upstream: a quarantined image
refused by digest, by a tag naming it, through an index holding it (nested too) and through
its blobs, for GET, HEAD, ranges and other methods; the answer refused before a byte of it is
sent; lifting it; a cached blob answer that cannot bypass it; a broken edit; the audit line."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from devtools.net import free_port
from proxy.cli.main import main as cli
from proxy.policy.quarantinefile import parse_quarantine
from tests.conftest import (
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    regproxy,
    replace_file,
    samples,
    scrape,
    until,
)
from tests.redis_server import RedisServer
from tests.test_tags import INDEX, OCI, Repository, call, error_message

SETUP = "quarantine:\n  file: quarantine.yaml\n"
REASON = "INC-77: a token baked into a layer"


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Image:
    """An image (config, one layer, manifest) in a repository of the fake upstream, blobs
    served too, with an index holding it under `multi` and an index holding that under
    `nested`."""

    def __init__(self, upstream: FakeUpstream, seed: str, name: str = "apps/web") -> None:
        self.repo = Repository(upstream, name)
        self.config = f'{{"architecture":"amd64","seed":"{seed}"}}'.encode()
        self.layer = f"layer of {seed}".encode() * 100
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(self.config), "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha(self.layer), "size": len(self.layer)}],
        }).encode()  # fmt: skip
        self.digest = self.repo.add("v1", body)
        # The index claims a plain manifest: its bytes are what counts.
        self.index = self.repo.add("multi", _index(self.digest, OCI), INDEX)
        self.nested = self.repo.add("nested", _index(self.index, OCI), INDEX)
        self.repo.serve("v1", "multi", "nested", *self.repo.manifests)
        for blob in (self.config, self.layer):
            upstream.handlers[self.blob_path(blob)] = _blob(blob)
        upstream.handlers["/v2/_catalog"] = functools.partial(_catalog, upstream)

    def blob_path(self, data: bytes) -> str:
        return f"/v2/{self.repo.name}/blobs/{sha(data)}"


def _index(digest: str, media_type: str) -> bytes:
    entry = {"mediaType": media_type, "digest": digest, "size": 1}
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry]}).encode()


async def _catalog(upstream: FakeUpstream, request: web.Request) -> web.StreamResponse:
    """The repositories whose manifests the fake upstream serves."""
    names = {p[4:].partition("/manifests/")[0] for p in upstream.handlers if "/manifests/" in p}
    return web.json_response({"repositories": sorted(names)})


def _blob(data: bytes) -> Callable[[web.Request], object]:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Docker-Content-Digest": sha(data), "Cache-Control": "max-age=31536000"}
        if request.method == "HEAD":
            return web.Response(headers=headers | {"Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)

    return handle  # type: ignore[return-value]


async def quarantine(proxy: RunningProxy, *args: str) -> None:
    """`regproxy quarantine ARGS` (in a thread: it reads the fake upstream this loop serves)."""
    assert await asyncio.to_thread(cli, ["quarantine", *args, "-c", str(proxy.config)]) == 0


async def refused(proxy: RunningProxy, method: str, path: str, **headers: str) -> str | None:
    """The refusal's message when the proxy answers 403, else None."""
    async with proxy.session.request(
        method, proxy.url + path, headers=proxy.auth("pull") | headers
    ) as resp:
        text = await resp.text()
        if resp.status != 403:
            return None
        return error_message(text) if method != "HEAD" else "403"


async def until_refused(proxy: RunningProxy, path: str) -> None:
    await until(lambda: refused(proxy, "GET", path), what=f"{path} was never refused")


async def quarantined(make_proxy: ProxyFactory, image: Image) -> RunningProxy:
    """A proxy whose every worker refuses `image` (quarantined by the CLI)."""
    proxy = await make_proxy(SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    await until_refused(proxy, "/v2/apps/web/manifests/v1")
    return proxy


@pytest.fixture
async def image(upstream: FakeUpstream) -> Image:
    return Image(upstream, "one")


async def test_a_quarantined_image_is_refused_every_way_it_can_be_reached(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    proxy = await make_proxy(SETUP)
    assert await call(proxy, "GET", "/v2/apps/web/manifests/v1", "pull") == (200, _body(image))
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    by_digest = f"/v2/apps/web/manifests/{image.digest}"
    await until_refused(proxy, by_digest)
    before = len(upstream.requests)
    for method in ("GET", "HEAD", "DELETE"):
        assert await refused(proxy, method, by_digest) is not None, method
    assert len(upstream.requests) == before  # by digest: never forwarded
    assert await refused(proxy, "GET", by_digest) == f"{image.digest} is quarantined: {REASON}"
    assert await refused(proxy, "GET", "/v2/apps/web/manifests/v1") == (
        f"{image.digest} is quarantined (tag v1 names it): {REASON}"
    )
    assert await refused(proxy, "HEAD", "/v2/apps/web/manifests/v1") == "403"
    for tag, index in (("multi", image.index), ("nested", image.nested)):
        assert await refused(proxy, "GET", f"/v2/apps/web/manifests/{tag}") == (
            f"{image.digest} is quarantined ({tag} is an index that holds it): {REASON}"
        )
        assert await refused(proxy, "HEAD", f"/v2/apps/web/manifests/{tag}") == "403"
        assert await refused(proxy, "GET", f"/v2/apps/web/manifests/{index}") is not None
    for blob in (image.layer, image.config):
        message = await refused(proxy, "GET", image.blob_path(blob))
        assert message == (
            f"{image.digest} is quarantined (blob {sha(blob)} is a layer or config of it): {REASON}"
        )
        assert await refused(proxy, "HEAD", image.blob_path(blob)) == "403"
        assert await refused(proxy, "GET", image.blob_path(blob), Range="bytes=0-9") is not None
    blob_requests = [r for r in upstream.requests[before:] if "/blobs/" in r.path_qs]
    assert blob_requests == []  # blobs: refused before forwarding


def _body(image: Image) -> str:
    return image.repo.manifests[image.digest][0].decode()


async def test_lifting_it_lets_every_request_through_again(
    make_proxy: ProxyFactory, image: Image
) -> None:
    proxy = await quarantined(make_proxy, image)
    await quarantine(proxy, "remove", image.digest)
    await until(lambda: _status(proxy, "/v2/apps/web/manifests/v1", 200), what="never lifted")
    for path in ("/v2/apps/web/manifests/nested", f"/v2/apps/web/manifests/{image.digest}",
                 image.blob_path(image.layer)):  # fmt: skip
        assert (await call(proxy, "GET", path, "pull"))[0] == 200, path


async def _status(proxy: RunningProxy, path: str, expected: int) -> bool:
    return (await call(proxy, "GET", path, "pull"))[0] == expected


async def test_manifest_only_leaves_the_blobs_and_other_images_alone(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    proxy = await make_proxy(SETUP)
    other = Image(upstream, "two", "apps/other")
    await quarantine(proxy, "add", image.digest, "--reason", REASON, "--manifest-only")
    await until_refused(proxy, "/v2/apps/web/manifests/v1")
    assert (await call(proxy, "GET", image.blob_path(image.layer), "pull"))[0] == 200
    assert (await call(proxy, "GET", other.blob_path(other.layer), "pull"))[0] == 200


async def test_a_remembered_blob_answer_cannot_bypass_it(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    proxy = await make_proxy(SETUP)
    path = image.blob_path(image.layer)
    assert (await call(proxy, "HEAD", path, "pull"))[0] == 200  # remembered (cache.ttl)
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    await until(lambda: refused(proxy, "HEAD", path), what="the cached answer was given")


async def test_the_registry_without_a_digest_header_is_checked_from_the_bytes(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    image.repo.send_digest = False
    proxy = await quarantined(make_proxy, image)
    assert await refused(proxy, "HEAD", "/v2/apps/web/manifests/v1") == "403"
    assert await refused(proxy, "GET", "/v2/apps/web/manifests/nested") is not None


async def test_a_registry_that_cannot_be_asked_is_a_refusal_not_a_pass(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    proxy = await quarantined(make_proxy, image)

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500)

    upstream.handlers[f"/v2/apps/web/manifests/{image.index}"] = broken
    status, _ = await call(proxy, "HEAD", "/v2/apps/web/manifests/nested", "pull")
    assert status == 503


async def test_a_broken_edit_keeps_the_last_good_list_and_a_bad_entry_only_itself(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    proxy = await quarantined(make_proxy, image)
    path = proxy.directory / "quarantine.yaml"
    good = path.read_text()
    replace_file(path, "digest: [\n")  # not even YAML: the last good list stays
    await until(lambda: proxy.state.current.kept, what="the broken edit was never seen")
    assert await refused(proxy, "GET", "/v2/apps/web/manifests/v1") is not None
    replace_file(path, good + "- digest: sha256:12\n  reason: x\n  added: 2026-01-01\n")
    await until(lambda: not proxy.state.current.kept, what="the fixed file was never read")
    assert await refused(proxy, "GET", "/v2/apps/web/manifests/v1") is not None


async def test_each_refusal_is_audited_with_who_and_the_entry(
    make_proxy: ProxyFactory, image: Image, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy(SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", REASON, "--by", "oncall")
    with caplog.at_level("INFO", "regproxy.audit"):
        await until_refused(proxy, "/v2/apps/web/manifests/multi")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "regproxy.audit"]
    line = lines[-1]
    assert (line["user"], line["action"], line["method"], line["status"]) == (
        "pull", "pull", "GET", 403
    )  # fmt: skip
    assert (line["repository"], line["reference"]) == ("apps/web", "multi")
    assert line["quarantine"]["digest"] == image.digest
    assert line["quarantine"]["added_by"] == "oncall"
    assert line["quarantine"]["how"] == "multi is an index that holds it"


async def test_regproxy_check_names_a_bad_entry_by_file_and_line(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(SETUP)
    (proxy.directory / "quarantine.yaml").write_text(
        "- digest: sha256:12\n  reason: x\n  added: 2026-01-01\n"
        f"- digest: {sha(b'x')}\n  reason: x\n  added: 2026-01-01\n  image_blobs:\n  - latest\n"
    )
    done = regproxy("check", "-c", str(proxy.config), cwd=proxy.directory)
    output = done.stdout + done.stderr
    assert "quarantine.yaml:1: quarantine entry disabled: digest: a sha256 digest has 64" in output
    assert (
        "quarantine.yaml:7: quarantine entry disabled: image_blobs: item 1: expected a digest"
        " like sha256:<64 hex digits>, got 'latest'"
    ) in output, output


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


async def test_with_redis_one_add_is_applied_by_every_replica_and_outlives_an_outage(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    image: Image,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    state = f"state:\n  backend: redis\n  url: {redis_server.url}\n  key_prefix: 'q:'\n"
    one = await make_proxy(SETUP + state, directory=tmp_path / "one")
    two = await make_proxy(SETUP + state, directory=tmp_path / "two")
    for proxy in (one, two):
        assert (await call(proxy, "GET", "/v2/apps/web/manifests/v1", "pull"))[0] == 200
    args = ["quarantine", "add", image.digest, "--reason", REASON, "-c", str(one.config)]
    assert await asyncio.to_thread(cli, args) == 0
    for proxy in (one, two):  # two has it from Redis only: its own file is empty
        await until_refused(proxy, "/v2/apps/web/manifests/multi")
    assert not (two.directory / "quarantine.yaml").exists()
    # two never read the image: the layer from a repository without it, by the record.
    upstream.handlers[f"/v2/apps/derived/blobs/{sha(image.layer)}"] = _blob(image.layer)
    assert await refused(two, "GET", f"/v2/apps/derived/blobs/{sha(image.layer)}") is not None
    redis_server.stop()  # an outage keeps what was read: never an open door
    assert await refused(two, "GET", image.blob_path(image.layer)) is not None
    redis_server.start()
    args = ["quarantine", "remove", image.digest, "-c", str(two.config)]
    assert await asyncio.to_thread(cli, args) == 0  # two's file has none: lifted in Redis
    await until(lambda: _status(two, "/v2/apps/web/manifests/v1", 200), what="two never lifted")
    assert await refused(one, "GET", "/v2/apps/web/manifests/v1") is not None  # its file has it


async def test_refusals_and_entries_are_in_the_metrics(
    make_proxy: ProxyFactory, image: Image
) -> None:
    proxy = await make_proxy(SETUP + f"metrics:\n  listen: 127.0.0.1:{free_port()}\n")
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    await until_refused(proxy, "/v2/apps/web/manifests/v1")
    assert await refused(proxy, "GET", "/v2/apps/web/manifests/multi") is not None
    assert await refused(proxy, "GET", image.blob_path(image.layer)) is not None
    assert proxy.server.metrics_port is not None
    _, text = await scrape(proxy.server.metrics_port)
    found = samples(text)
    assert found[("regproxy_quarantine_entries", ())] == 1
    for kind, count in (("tag", 1), ("index", 1), ("blob", 1)):
        assert found[("regproxy_quarantine_refused_total", (("kind", kind),))] >= count, kind


async def test_explain_says_when_a_quarantined_digest_decides(
    make_proxy: ProxyFactory, image: Image
) -> None:
    proxy = await make_proxy(SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    base = ("explain", "-c", str(proxy.config), "pull", "pull", "apps/web")
    done = regproxy(*base, "--digest", image.digest, cwd=proxy.directory)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines()[:3] == [
        f"DENY pull pull apps/web@{image.digest}",
        f"  decided by: quarantine {proxy.directory / 'quarantine.yaml'}:3: {REASON}",
        "  acl: rule built-in: valid-user allows it",
    ]
    done = regproxy(*base, "--tag", "v1", cwd=proxy.directory)
    assert done.returncode == 0 and "note: 1 digest(s) quarantined" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["add", "sha256:12", "--reason", "x"], 2, "a sha256 digest has 64 hex digits"),
        (["add", f"sha256:{'a' * 64}"], 2, "missing --reason"),
        (["add", f"sha256:{'a' * 64}", "--reason", "two\nlines"], 2, "one line of text"),
        (["remove", f"sha256:{'a' * 64}", "--reason", "x"], 2, "remove takes one DIGEST"),
        (["list", f"sha256:{'a' * 64}"], 2, "list takes no other arguments"),
        (["remove", f"sha256:{'a' * 64}"], 1, "is not quarantined in"),
        (
            ["add", f"sha256:{'a' * 64}", "--reason", "x", "--manifest-only", "--repository", "a"],
            2,
            "--manifest-only reads no blobs",
        ),
        (
            ["add", f"sha256:{'a' * 64}", "--reason", "x", "--repository", "../x"],
            2,
            "--repository: not a repository name",
        ),
        (["remove", f"sha256:{'a' * 64}", "--repository", "a"], 2, "remove takes one DIGEST"),
    ],
)
def test_the_command_line_refuses_what_it_cannot_do(
    tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text("quarantine:\n  file: quarantine.yaml\n")
    done = regproxy("quarantine", *args, "-c", str(config), cwd=tmp_path)
    assert done.returncode == code and says in done.stderr, done.stderr
    assert not (tmp_path / "quarantine.yaml").exists()


# `add` records the blobs: read from the registry, so that every worker knows them.


async def add(proxy: RunningProxy, digest: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`regproxy quarantine add DIGEST --reason REASON OPTIONS`, as a user runs it."""
    args = ("quarantine", "add", digest, "--reason", REASON, *options, "-c", str(proxy.config))
    return await asyncio.to_thread(regproxy, *args, cwd=proxy.directory)


def recorded(proxy: RunningProxy, digest: str) -> frozenset[str] | None:
    """The blobs the quarantine file records with `digest`'s entry."""
    path = proxy.directory / "quarantine.yaml"
    entry = parse_quarantine(path.read_text(), str(path))[0].get(digest)
    assert entry is not None
    return entry.image_blobs


async def test_add_records_the_blobs_read_from_the_registry(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    other = Image(upstream, "two", "apps/other")
    alone = sha(b"a blob by itself")
    for name, digest in (("other", image.nested), ("other", alone), ("web", alone)):
        upstream.handlers[f"/v2/apps/{name}/manifests/{digest}"] = _not_found  # the fake: 200
    proxy = await make_proxy(SETUP)
    done = await add(proxy, image.nested)  # an index of an index: searched in the catalog
    assert done.returncode == 0, done.stderr
    assert "its 2 blob(s) recorded (config and layers), read in apps/web" in done.stdout
    assert recorded(proxy, image.nested) == {sha(image.config), sha(image.layer)}
    done = await add(proxy, other.digest, "--repository", "apps/other")
    assert done.returncode == 0, done.stderr
    assert recorded(proxy, other.digest) == {sha(other.config), sha(other.layer)}
    listing = await asyncio.to_thread(
        regproxy, "quarantine", "list", "-c", str(proxy.config), cwd=proxy.directory
    )
    assert [line.split()[3:5] for line in listing.stdout.splitlines()[1:]] == [
        ["yes", "(2)"], ["yes", "(2)"]
    ]  # fmt: skip
    done = await add(proxy, alone)  # no manifest anywhere: nothing to read
    assert done.returncode == 0 and "no blobs to record" in done.stdout, done.stderr
    assert recorded(proxy, alone) is None


async def test_a_worker_that_never_read_the_image_refuses_its_recorded_blobs(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    # A derived image's repository holds the layer, not the quarantined image.
    upstream.handlers[f"/v2/apps/derived/blobs/{sha(image.layer)}"] = _blob(image.layer)
    proxy = await make_proxy(SETUP)
    before = len(upstream.requests)
    assert (await add(proxy, image.digest)).returncode == 0
    assert before < len(upstream.requests)  # `add` read the image
    path = f"/v2/apps/derived/blobs/{sha(image.layer)}"
    # Until the entry is in force the blob is forwarded (nothing of the image with it): only
    # what the proxy asks once it is counts.
    await until_refused(proxy, path)
    in_force = len(upstream.requests)
    message = f"{image.digest} is quarantined (blob {sha(image.layer)} is a layer or config of it)"
    assert await refused(proxy, "GET", path) == f"{message}: {REASON}"
    assert await refused(proxy, "HEAD", path) == "403"
    assert await refused(proxy, "GET", path, Range="bytes=0-9") is not None
    mount = f"/v2/apps/mine/blobs/uploads/?mount={sha(image.layer)}&from=apps/derived"
    async with proxy.session.post(proxy.url + mount, headers=proxy.auth("push")) as resp:
        assert resp.status == 403
    # The proxy asked the registry nothing: not the image, not the other repository.
    assert [r.path_qs for r in upstream.requests[in_force:]] == []
    done = await asyncio.to_thread(
        regproxy, "explain", "-c", str(proxy.config), "pull", "pull", "apps/derived",
        "--digest", sha(image.layer), cwd=proxy.directory,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stdout.splitlines()[1] == (
        f"  decided by: quarantine {proxy.directory / 'quarantine.yaml'}:3"
        f" (a layer or config of {image.digest}): {REASON}"
    )


async def _other_bytes(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"schemaVersion": 2, "layers": []}')


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("down", "cannot read"),
        ("other bytes", "the registry answered other bytes"),
        ("not in the repository", "apps/elsewhere has no manifest"),
        ("no catalog", "cannot read"),
    ],
)
async def test_add_that_cannot_read_the_blobs_quarantines_the_digest_and_says_so(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image, fault: str, says: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}" if fault == "down" else None
    proxy = await make_proxy(SETUP, upstream_url=down)
    options: tuple[str, ...] = ()
    if fault == "other bytes":
        upstream.handlers[f"/v2/apps/web/manifests/{image.digest}"] = _other_bytes
    elif fault == "not in the repository":
        options = ("--repository", "apps/elsewhere")
        upstream.handlers[f"/v2/apps/elsewhere/manifests/{image.digest}"] = _not_found
    elif fault == "no catalog":
        upstream.handlers["/v2/_catalog"] = _unauthorized
    done = await add(proxy, image.digest, *options)
    assert done.returncode == 1, done.stdout
    assert f"quarantined {image.digest}: {REASON}" in done.stdout
    assert says in done.stderr and "WARNING: the blobs of" in done.stderr, done.stderr
    assert "are NOT recorded" in done.stderr
    assert recorded(proxy, image.digest) is None
    await until_refused(proxy, f"/v2/apps/web/manifests/{image.digest}")


async def _unauthorized(request: web.Request) -> web.StreamResponse:
    return web.Response(status=401)


async def _not_found(request: web.Request) -> web.StreamResponse:
    return web.Response(status=404)


async def test_a_hand_written_entry_without_blobs_still_refuses_them_once_read(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    proxy = await make_proxy(SETUP)
    entry = f"- digest: {image.digest}\n  reason: '{REASON}'\n  added: 2026-12-07\n"
    replace_file(proxy.directory / "quarantine.yaml", entry)
    await until_refused(proxy, f"/v2/apps/web/manifests/{image.digest}")
    assert await refused(proxy, "GET", image.blob_path(image.layer)) is not None


# Attacks (red team): each one a way around the quarantine that was tried.


async def test_a_mount_of_a_quarantined_layer_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    # The attack: copy a quarantined image's layer into a repository of one's own, registry
    # side, with a cross-repository mount, to pull it from there later.
    proxy = await make_proxy(SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    await until_refused(proxy, f"/v2/apps/web/manifests/{image.digest}")
    for blob in (image.layer, image.config):
        path = f"/v2/apps/other/blobs/uploads/?mount={sha(blob)}&from=apps/web"
        async with proxy.session.post(proxy.url + path, headers=proxy.auth("push")) as resp:
            assert resp.status == 403, (blob, await resp.text())
    assert not [r for r in upstream.requests if "mount=" in r.path_qs]


async def test_a_registry_naming_another_algorithm_cannot_hide_the_bytes(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    # The attack: the answer's Docker-Content-Digest names sha512 (or lies), so the bytes
    # would be hashed with sha512 only and never match the sha256 entry.
    body, media_type = image.repo.manifests[image.digest]
    named = "sha512:" + hashlib.sha512(body).hexdigest()

    async def sha512_named(request: web.Request) -> web.StreamResponse:
        headers = {"Docker-Content-Digest": named, "Content-Type": media_type}
        return web.Response(body=body if request.method == "GET" else None, headers=headers)

    upstream.handlers["/v2/apps/web/manifests/v1"] = sha512_named
    proxy = await make_proxy(SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    await until_refused(proxy, f"/v2/apps/web/manifests/{image.digest}")
    assert await refused(proxy, "GET", "/v2/apps/web/manifests/v1") is not None


async def test_a_not_modified_answer_to_a_quarantined_etag_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream, image: Image
) -> None:
    # The attack: a client holding the image asks by tag with If-None-Match; the registry
    # answers 304 (distribution's names no digest), and the client goes on with its copy.
    async def not_modified(request: web.Request) -> web.StreamResponse:
        return web.Response(status=304, headers={"Etag": f'"{image.digest}"'})

    upstream.handlers["/v2/apps/web/manifests/v1"] = not_modified
    proxy = await make_proxy(SETUP)
    await quarantine(proxy, "add", image.digest, "--reason", REASON)
    await until_refused(proxy, f"/v2/apps/web/manifests/{image.digest}")
    etag = f'"{image.digest}"'
    for method in ("GET", "HEAD"):
        path = "/v2/apps/web/manifests/v1"
        assert await refused(proxy, method, path, **{"If-None-Match": etag}) is not None, method
