"""Robot accounts through the real request path: made with `regproxy robot create`, used with
Basic in proxy mode and token-server mode, bounded by their scopes and their owner's rights at
the moment of the request, expired, revoked (on every worker), and hand-edited."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from proxy.authn.robotfile import (
    SECRET_RE,
    Robot,
    derive,
    entry_text,
    new_secret,
    secret_hash,
    usage_path,
)
from proxy.authn.robots import read_usage
from tests.conftest import (
    GROUPS_TEXT,
    SECRET,
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    Served,
    TlsPair,
    basic,
    htpasswd_text,
    one_connection_per_worker,
    replace_file,
    until,
)
from tests.conftest import regproxy as run_regproxy

ACL = """acl:
  - groups: [pusher]
    repositories: ["apps/**", "team/**"]
    actions: [pull, push, delete]
  - actions: [pull]
    repositories: ["library/**"]
"""
SETUP = "robots: robots.yaml\nsecret_file: secret\n" + ACL


def regproxy(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_regproxy(*args, "-c", str(directory / "regproxy.yaml"), cwd=directory)


def create(directory: Path, name: str, *flags: str) -> str:
    """`regproxy robot create NAME FLAGS`: the secret it prints."""
    made = regproxy(directory, "robot", "create", name, *flags)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


async def started(make_proxy: ProxyFactory, tmp_path: Path, extra: str = "") -> RunningProxy:
    (tmp_path / "secret").write_text(SECRET + "\n")
    return await make_proxy(SETUP + extra)


async def status(proxy: RunningProxy, auth: dict[str, str], method: str = "GET",
                 path: str = "/v2/") -> int:  # fmt: skip
    async with proxy.session.request(method, proxy.url + path, headers=auth) as resp:
        await resp.read()
        return resp.status


def robot(name: str, secret: str) -> dict[str, str]:
    return {"Authorization": basic(f"robot${name}", secret)}


SCOPED = ("--repositories", "apps/app", "apps/app-*", "--actions", "pull,push", "--owner", "push")


async def test_a_robot_acts_within_its_scopes_and_its_owners_rights(
    make_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    proxy = await started(make_proxy, tmp_path)
    secret = create(tmp_path, "ci", *SCOPED, "--expires", "30d", "--description", "release")
    assert SECRET_RE.fullmatch(secret)
    assert secret not in (tmp_path / "robots.yaml").read_text()  # only its keyed hash
    ci = robot("ci", secret)
    await until(lambda: _is(proxy, ci, 200))
    with caplog.at_level("INFO", "regproxy.audit"):
        assert await status(proxy, ci, "PUT", "/v2/apps/app/manifests/1") == 200
        assert await status(proxy, ci, "PUT", "/v2/apps/app-web/manifests/1") == 200
        assert await status(proxy, ci, "PUT", "/v2/apps/other/manifests/1") == 403  # scope
        assert await status(proxy, ci, "DELETE", "/v2/apps/app/manifests/1") == 403  # actions
        assert await status(proxy, ci, "GET", "/v2/library/x/manifests/1") == 403  # scope
    assert [r.path_qs for r in upstream.requests if r.method == "PUT"] == [
        "/v2/apps/app/manifests/1",
        "/v2/apps/app-web/manifests/1",
    ]
    audited = [json.loads(r.getMessage()) for r in caplog.records if r.name == "regproxy.audit"]
    assert [(a["user"], a["robot"], a["owner"], a["status"]) for a in audited] == [
        ("robot$ci", "ci", "push", 200),
        ("robot$ci", "ci", "push", 200),
        ("robot$ci", "ci", "push", 403),
        ("robot$ci", "ci", "push", 403),
    ]


async def _is(proxy: RunningProxy, auth: dict[str, str], expected: int,
              method: str = "GET", path: str = "/v2/") -> bool:  # fmt: skip
    return await status(proxy, auth, method, path) == expected


async def test_a_robot_secret_opens_nothing_else(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await started(make_proxy, tmp_path, "throttle:\n  attempts: 100\n")
    secret = create(tmp_path, "ci", *SCOPED, "--expires", "1d")
    other = create(tmp_path, "other", *SCOPED, "--expires", "1d")
    await until(lambda: _is(proxy, robot("other", other), 200))
    assert await status(proxy, robot("ci", secret)) == 200
    assert await status(proxy, robot("ci", other)) == 401  # another robot's secret
    assert await status(proxy, robot("ci", secret[:-1] + "x")) == 401
    assert await status(proxy, robot("nobody", secret)) == 401
    assert await status(proxy, {"Authorization": basic("push", secret)}) == 401
    async with proxy.session.get(
        proxy.url + "/v2/", headers={"Authorization": basic("ci", secret)}
    ) as r:
        assert r.status == 401  # under the robot's bare name: never tried as a password
        assert (await r.json())["errors"][0]["message"] == "a robot logs in as robot$NAME"
    assert await status(proxy, robot("ci", USERS["push"])) == 401  # the owner's password


async def test_the_owner_losing_a_right_or_going_away_binds_the_robot_at_once(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await started(make_proxy, tmp_path, "throttle:\n  attempts: 1000\n")
    ci = robot("ci", create(tmp_path, "ci", *SCOPED, "--expires", "1d"))
    push = ("PUT", "/v2/apps/app/manifests/1")
    await until(lambda: _is(proxy, ci, 200, *push))
    replace_file(proxy.groups, "readers: other\n")  # push is no longer in pusher
    await until(lambda: _is(proxy, ci, 403, *push))
    assert await status(proxy, ci, "GET", "/v2/apps/app/manifests/1") == 403  # no pull either
    replace_file(proxy.groups, GROUPS_TEXT)
    await until(lambda: _is(proxy, ci, 200, *push))
    users = {u: p for u, p in USERS.items() if u != "push"}
    replace_file(proxy.htpasswd, htpasswd_text(users))  # the owner is deleted
    await until(lambda: _is(proxy, ci, 401))
    async with proxy.session.get(proxy.url + "/v2/", headers=ci) as resp:
        message = (await resp.json())["errors"][0]["message"]
    assert message == "the robot's owner 'push' is not a user any more"


async def test_an_expired_robot_is_refused_without_any_reload(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    expires = time.time() + 4  # the file is there before the proxy starts: no reload to wait
    entry = Robot("soon", secret_hash(derive(SECRET.encode(), "robots"), secret), ("apps/**",),
                  frozenset({"pull"}), expires, "push")  # fmt: skip
    (tmp_path / "robots.yaml").write_text(entry_text(entry))
    proxy = await started(make_proxy, tmp_path)
    soon = robot("soon", secret)
    assert await status(proxy, soon) == 200
    loaded = proxy.state.current
    while time.time() < expires:
        await asyncio.sleep(0.1)
    assert await status(proxy, soon) == 401
    assert proxy.state.current is loaded  # no file changed: the clock did it


async def test_revoke_takes_effect(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await started(make_proxy, tmp_path)
    ci = robot("ci", create(tmp_path, "ci", *SCOPED, "--expires", "1d"))
    keep = robot("keep", create(tmp_path, "keep", *SCOPED, "--expires", "1d"))
    await until(lambda: _is(proxy, keep, 200))
    revoked = regproxy(tmp_path, "robot", "revoke", "ci")
    assert (revoked.returncode, revoked.stdout) == (0, "robot ci revoked\n")
    await until(lambda: _is(proxy, ci, 401))
    assert await status(proxy, keep) == 200
    again = regproxy(tmp_path, "robot", "revoke", "ci")
    assert again.returncode == 1 and "no robot named 'ci'" in again.stderr


async def test_a_hand_edit_with_a_bad_entry_disables_only_that_robot(
    make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await started(make_proxy, tmp_path)
    ci = robot("ci", create(tmp_path, "ci", *SCOPED, "--expires", "1d"))
    await until(lambda: _is(proxy, ci, 200))
    path = tmp_path / "robots.yaml"
    good = path.read_text()
    broken = good + "- name: typo\n  repositories: [apps/app]\n  actions: [pull, pusj]\n"
    later = robot("later", new_secret())
    with caplog.at_level("WARNING", "regproxy.reload"):
        replace_file(path, broken + _entry("later", later))
        await until(lambda: _is(proxy, later, 200))
    line = good.count("\n") + 3
    assert f"{path}:{line}: robot disabled: actions: expected" in caplog.text
    assert await status(proxy, ci) == 200  # the others keep working

    async def refused() -> bool:
        return f"reload failed for {path}, keeping its last good version: {path}:" in caplog.text

    with caplog.at_level("ERROR", "regproxy.reload"):
        replace_file(path, "- [not: closed\n")  # not YAML: the last good file stays
        await until(refused)  # the broken edit was read and refused
    assert await status(proxy, ci) == 200 and await status(proxy, later) == 200


def _entry(name: str, auth: dict[str, str]) -> str:
    """A robot's entry for the secret in `auth` (as `regproxy robot create` writes it)."""
    import base64

    secret = base64.b64decode(auth["Authorization"].split()[1]).decode().partition(":")[2]
    made = Robot(name, secret_hash(derive(SECRET.encode(), "robots"), secret), ("apps/**",),
                 frozenset({"pull"}), time.time() + 3600, "push")  # fmt: skip
    return entry_text(made)


async def test_last_use_is_recorded_without_writing_the_robots_file(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await started(make_proxy, tmp_path)
    ci = robot("ci", create(tmp_path, "ci", *SCOPED, "--expires", "1d"))
    create(tmp_path, "idle", *SCOPED, "--expires", "1d")
    await until(lambda: _is(proxy, ci, 200))
    robots = (tmp_path / "robots.yaml").read_text()
    before = time.time()
    await proxy.server.shutdown()  # writes what was seen (also every 30 s while running)
    assert (tmp_path / "robots.yaml").read_text() == robots
    used = read_usage(usage_path(tmp_path / "robots.yaml"))
    assert list(used) == ["ci"] and before - 2 <= used["ci"] <= time.time()
    listed = regproxy(tmp_path, "robot", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "OWNER", "ACTIONS", "REPOSITORIES", "EXPIRES", "LAST", "USED"]
    assert rows[0].split()[:5] == ["ci", "push", "pull,push", "apps/app", "apps/app-*"]
    assert rows[0].split()[-1] != "never" and rows[1].split()[-1] == "never"


async def test_token_server_mode_grants_a_robot_only_its_share(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    ca.private_key_pem.write_to_path(str(tmp_path / "token.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "token.crt"))
    token = "token:\n  issuer: t\n  service: reg.test\n  key: token.key\n  certificate: token.crt\n"
    proxy = await started(make_proxy, tmp_path, token)
    ci = robot("ci", create(tmp_path, "ci", *SCOPED, "--expires", "1d"))
    await until(lambda: _is(proxy, ci, 200, "GET", "/auth?service=reg.test"))
    scopes = "scope=repository:apps/app:pull,push,delete&scope=repository:team/x:pull,push"
    async with proxy.session.get(f"{proxy.url}/auth?service=reg.test&{scopes}", headers=ci) as r:
        assert r.status == 200
        assert (await r.json())["scope"] == "repository:apps/app:pull,push"
    async with proxy.session.post(proxy.url + "/auth", data={
        "grant_type": "password", "service": "reg.test", "username": "robot$ci",
        "password": "wrong", "scope": "repository:apps/app:pull",
    }) as r:  # fmt: skip
        assert r.status == 401


@pytest.mark.parametrize(
    "served", ["workers: 2\nthrottle:\n  attempts: 1000\n" + SETUP], indirect=True
)
async def test_revocation_reaches_every_worker_within_a_second(
    served: Served, tls: TlsPair
) -> None:
    secret = create(served.directory, "ci", *SCOPED, "--expires", "1d")
    auth = basic("robot$ci", secret)
    first, second = await one_connection_per_worker(served, tls)
    deadline = time.monotonic() + 10
    while [await c.get("/v2/", auth) for c in (first, second)] != [200, 200]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert regproxy(served.directory, "robot", "revoke", "ci").returncode == 0
    revoked_at = time.monotonic()  # the file is renamed into place just before the CLI exits
    refused: dict[int, float] = {}
    while len(refused) < 2:
        for n, connection in enumerate((first, second)):
            if n not in refused and await connection.get("/v2/", auth) == 401:
                refused[n] = time.monotonic() - revoked_at
        assert time.monotonic() - revoked_at < 10, "a worker kept the revoked robot"
        await asyncio.sleep(0.02)
    await first.close()
    await second.close()
    print(f"revocation took {max(refused.values()):.2f}s on the slower worker")
