"""Live edits of htpasswd, groups and the config file, and broken edits that keep the last
good version in force."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devtools.net import free_port
from devtools.oidc_issuer import Issuer, new_key
from proxy.authn.robotfile import Robot, derive, entry_text, new_secret, secret_hash
from tests.conftest import (
    GROUPS_TEXT,
    SECRET,
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    TlsPair,
    basic,
    htpasswd_text,
    regproxy,
    replace_file,
    samples,
    scrape,
    until,
)


async def status(proxy: RunningProxy, user: str, password: str, method: str = "GET") -> int:
    path = "/v2/" if method == "GET" else "/v2/a/blobs/uploads/"
    headers = {"Authorization": basic(user, password)}
    async with proxy.session.request(method, proxy.url + path, headers=headers) as resp:
        return resp.status


async def test_htpasswd_rename_and_in_place_edits(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    assert await status(proxy, "carol", "c-pw") == 401
    replace_file(proxy.htpasswd, htpasswd_text({**USERS, "carol": "c-pw"}))
    await until(lambda: _is(status(proxy, "carol", "c-pw"), 200))
    proxy.htpasswd.write_text(htpasswd_text({"carol": "c-pw2"}))  # in place
    await until(lambda: _is(status(proxy, "carol", "c-pw2"), 200))
    assert await status(proxy, "pull", USERS["pull"]) == 401


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_group_edit_grants_push(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    assert await status(proxy, "pull", USERS["pull"], "POST") == 403
    replace_file(proxy.groups, "pusher: push pull\n")
    await until(lambda: _is(status(proxy, "pull", USERS["pull"], "POST"), 200))


async def test_config_edit_changes_push_group(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    text = proxy.config.read_text()
    replace_file(proxy.config, text + "push_group: readers\n")
    await until(lambda: _is(status(proxy, "other", USERS["other"], "POST"), 200))
    assert await status(proxy, "push", USERS["push"], "POST") == 403


@pytest.mark.parametrize(
    ("target", "content", "logged"),
    [
        ("htpasswd", b"\xff\xfe\x00 binary", "htpasswd:1: not UTF-8 text"),
        ("htpasswd", None, "htpasswd: cannot read: No such file or directory"),
        ("groups", b"pusher: push\n\x00\x00", "groups:2: binary data (NUL byte)"),
        ("regproxy.yaml", b"upstream: [unclosed\n", "regproxy.yaml:1: invalid YAML"),
        ("regproxy.yaml", b"upstreem: http://x\n", "regproxy.yaml:1: unknown key 'upstreem'"),
    ],
)
async def test_broken_edit_keeps_last_good_version(
    make_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    target: str,
    content: bytes | None,
    logged: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="regproxy.reload")
    proxy = await make_proxy()
    path = proxy.directory / target
    if content is None:
        path.unlink()
    else:
        replace_file(path, content)
    await until(lambda: _async(any(logged in r.getMessage() for r in caplog.records)))
    assert f"reload failed for {path}, keeping its last good version: {path}" in caplog.text
    assert await status(proxy, "pull", USERS["pull"]) == 200
    assert await status(proxy, "push", USERS["push"], "POST") == 200
    assert await status(proxy, "pull", USERS["pull"], "POST") == 403


async def _async(value: bool) -> bool:
    return value


ACL = "- groups: [pusher]\n  actions: '*'\n- actions: [pull]\n"


def _robot_entry(secret: str) -> str:
    """A robot `ci` owned by `push`, for this secret, as `regproxy robot create` writes it."""
    key = derive(SECRET.encode(), "robots")
    robot = Robot("ci", secret_hash(key, secret), ("**",), frozenset({"pull", "push"}),
                  time.time() + 3600, "push")  # fmt: skip
    return entry_text(robot)


def _with_oidc_line(path: Path, line: str) -> str:
    """The config with one more line at the top of its `oidc:` section."""
    return path.read_text().replace("oidc:\n", f"oidc:\n{line}\n", 1)


# File -> its broken edit (from its current text): each a way to break one file of a snapshot.
BREAKS: dict[str, tuple[str, Callable[[Path], str | bytes]]] = {
    "robots": ("robots.yaml", lambda path: path.read_text() + "- name: [broken\n"),
    "groups": ("groups", lambda _: b"pusher: push\n\x00\x00"),
    "acl": ("acl.yaml", lambda _: "- groups: [pusher\n  actions: '*'\n"),
    "htpasswd": ("htpasswd", lambda _: b"\xff\xfe\x00 binary"),
    "oidc CA": ("issuer/issuer-ca.pem", lambda _: "not a certificate\n"),
    "oidc section": ("regproxy.yaml", lambda path: _with_oidc_line(path, "  clock_skew: 9999")),
    "config": ("regproxy.yaml", lambda path: path.read_text() + "upstreem: http://x\n"),
    "config naming a missing file": (
        "regproxy.yaml",
        lambda path: path.read_text().replace("htpasswd: htpasswd", "htpasswd: missing"),
    ),
}


@pytest.mark.parametrize("broken", list(BREAKS))
async def test_one_broken_file_costs_only_that_file(
    make_proxy: ProxyFactory, issuer: Issuer, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, broken: str,
) -> None:  # fmt: skip
    """#23 finding 5: a broken edit of one file (the robots file, as in the finding: then
    `regproxy passwd --delete`) refused the whole new snapshot, so a deleted user kept
    logging in. Now the broken file keeps its last good version (logged with file:line,
    counted as a failed reload) and every other file's edits apply."""
    (tmp_path / "acl.yaml").write_text(ACL)
    (tmp_path / "secret").write_text(SECRET + "\n")
    ci = new_secret()
    (tmp_path / "robots.yaml").write_text(_robot_entry(ci))
    proxy = await make_proxy(
        "acl: acl.yaml\nrobots: robots.yaml\nsecret_file: secret\n"
        f"metrics:\n  listen: 127.0.0.1:{free_port()}\n" + issuer.config()
    )
    assert proxy.server.metrics_port is not None
    tokens = {"Authorization": f"Bearer {issuer.token()}"}
    assert await status(proxy, "other", USERS["other"]) == 200
    assert await _status(proxy, tokens) == 200  # the issuer's keys are fetched
    name, edit = BREAKS[broken]
    path = tmp_path / name
    before = samples((await scrape(proxy.server.metrics_port))[1])  # counters are per process
    caplog.set_level(logging.ERROR, logger="regproxy.reload")
    replace_file(path, edit(path))
    kept = f"reload failed for {path}, keeping its last good version: {tmp_path}/"
    await until(lambda: _async(kept in caplog.text), what=caplog.text)
    if broken == "htpasswd":  # another file's edit: `other` becomes a pusher
        replace_file(proxy.groups, GROUPS_TEXT + "pusher: other\n")
        await until(lambda: _is(status(proxy, "other", USERS["other"], "POST"), 200))
    else:  # the finding's edit: a user deleted with `regproxy passwd --delete`
        deleted = regproxy("passwd", "htpasswd", "other", "--delete", cwd=tmp_path)
        assert deleted.returncode == 0, deleted.stderr
        await until(lambda: _is(status(proxy, "other", USERS["other"]), 401))
    # The broken file's last good version is what is in force: users and their passwords,
    # groups and ACL (push may push), the robot, the issuer's CA (a new key is fetched).
    assert await status(proxy, "pull", USERS["pull"]) == 200
    assert await status(proxy, "push", USERS["push"], "POST") == 200
    assert await _status(proxy, {"Authorization": basic("robot$ci", ci)}) == 200
    rotated = new_key("EC", "rotated")
    issuer.keys.append(rotated)
    assert await _status(proxy, {"Authorization": f"Bearer {issuer.token(key=rotated)}"}) == 200
    assert proxy.state.current.config.oidc is not None
    assert proxy.state.current.config.oidc.clock_skew == 60  # the kept config's
    assert "keeping the last good configuration" not in caplog.text  # nothing else was kept
    after = samples((await scrape(proxy.server.metrics_port))[1])

    def reloads(result: str) -> float:
        key = ("regproxy_reloads_total", (("result", result),))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (reloads("failed") >= 2, reloads("ok")) == (True, 0)  # each reload: the file kept


async def _status(proxy: RunningProxy, headers: dict[str, str]) -> int:
    async with proxy.session.get(proxy.url + "/v2/", headers=headers) as resp:
        return resp.status


async def test_bad_line_disables_only_that_user(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    text = htpasswd_text(USERS).replace("pull:$2y$", "pull:$2y$XX", 1)
    replace_file(proxy.htpasswd, text)
    await until(lambda: _is(status(proxy, "pull", USERS["pull"]), 401))
    assert await status(proxy, "push", USERS["push"]) == 200


async def test_keep_alive_connection_survives_reload(
    make_proxy: ProxyFactory, tls: TlsPair, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy()
    port = proxy.server.port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context(), server_hostname="localhost"
    )
    request = (
        f"GET /v2/ HTTP/1.1\r\nHost: localhost:{port}\r\n"
        f"Authorization: {basic('push', USERS['push'])}\r\n\r\n"
    ).encode()

    async def one_request() -> bytes:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        return head.split(b"\r\n")[0]

    assert await one_request() == b"HTTP/1.1 200 OK"
    replace_file(proxy.htpasswd, htpasswd_text({**USERS, "dave": "d"}))
    await until(lambda: _is(status(proxy, "dave", "d"), 200))
    assert await one_request() == b"HTTP/1.1 200 OK"  # same TLS connection, still open
    writer.close()
    await writer.wait_closed()


async def test_sighup_style_reload_of_tls_certificate(
    make_proxy: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import trustme

    proxy = await make_proxy()
    new_ca = trustme.CA()
    leaf = new_ca.issue_cert("localhost")
    cert_dir = tmp_path_factory.mktemp("newcert")
    cert, key = cert_dir / "server.crt", cert_dir / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    text = proxy.config.read_text()
    replace_file(proxy.config, text + f"tls:\n  cert: {cert}\n  key: {key}\n")
    assert await proxy.state.reload("test") is True  # duplicate 'tls' key: the config is kept
    assert [(path, p.message) for path, p in proxy.state.current.kept] == [
        (proxy.config, "duplicate key 'tls'")
    ]
    assert proxy.state.current.config.tls_cert != cert
    replace_file(
        proxy.config,
        text.split("tls:")[0] + f"tls:\n  cert: {cert}\n  key: {key}\n",
    )
    assert await proxy.state.reload("test") is True
    context = ssl.create_default_context()
    new_ca.configure_trust(context)
    _, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.server.port, ssl=context, server_hostname="localhost"
    )
    writer.close()
    await writer.wait_closed()


def test_an_edit_made_while_the_files_were_read_is_not_lost(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """The watcher starts from each file as it was just before it was read: an edit that
    lands after the read but before watching starts is still seen as an edit."""
    from proxy.conf.reload import Watcher
    from proxy.conf.snapshot import load_snapshot
    from tests.conftest import write_setup

    config = write_setup(tmp_path, tls, upstream.url)
    snapshot, _ = load_snapshot(config, {})
    replace_file(tmp_path / "htpasswd", htpasswd_text({**USERS, "late": "pw"}))
    watcher = Watcher(snapshot.signatures)
    assert watcher.stable_changes() == []  # changed, but not yet stable for one poll
    assert watcher.stable_changes() == [tmp_path / "htpasswd"]


async def test_a_quarantine_edit_reads_that_file_alone(make_proxy: ProxyFactory) -> None:
    """The quarantine file is watched apart and read alone: the rest of the snapshot is kept
    as it is (the same users, rules); a broken edit keeps its last good version while the
    other files' edits still apply."""
    proxy = await make_proxy("quarantine:\n  file: quarantine.yaml\n")
    path, before = proxy.directory / "quarantine.yaml", proxy.state.current
    entry = f"- digest: sha256:{'a' * 64}\n  reason: x\n  added: 2026-12-07\n"
    replace_file(path, entry)
    await until(lambda: proxy.state.current.quarantine, what="the entry was never read")
    now = proxy.state.current
    assert now.users is before.users and now.rules is before.rules and now.authn is before.authn
    replace_file(path, "- digest: [\n")
    await until(lambda: proxy.state.current.kept, what="the broken edit was never seen")
    assert len(proxy.state.current.quarantine) == 1  # its last good version
    replace_file(proxy.groups, GROUPS_TEXT + "pusher: other\n")
    await until(lambda: _is(status(proxy, "other", USERS["other"], "POST"), 200))
    assert len(proxy.state.current.quarantine) == 1 and proxy.state.current.kept
    replace_file(path, "")
    await until(lambda: not proxy.state.current.quarantine, what="never lifted")
    assert not proxy.state.current.kept
