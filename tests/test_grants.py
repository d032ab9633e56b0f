"""Break-glass grants through the real request path and the CLI as a user runs it: made with
`regproxy grant`, allowing a pull-only user's push until revoked or until the clock ends it,
audited with every use, applied by every worker and by replicas reading one file, a bad hand
edit disabling only itself, never past immutable tags or protected deletes, in token server
mode too; `check` and `explain` saying what they see."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from pathlib import Path

import pytest
import trustme

from proxy.core.moments import parse_moment, timestamp
from proxy.policy.grantfile import entry_text
from proxy.policy.grants import Grant
from tests.conftest import (
    GROUPS_TEXT,
    USERS,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    Served,
    TlsPair,
    basic,
    htpasswd_text,
    one_connection_per_worker,
    regproxy,
    replace_file,
    until,
)
from tests.test_authz import paginating_catalog, walk_catalog

SETUP = "grants:\n  file: grants.yaml\n"
PUSH = ("PUT", "/v2/apps/web/manifests/1")


def grant_cli(directory: Path, *args: str) -> str:
    """`regproxy grant ARGS -c regproxy.yaml` in `directory`, which must succeed: the new id."""
    made = regproxy("grant", *args, "-c", "regproxy.yaml", cwd=directory)
    assert made.returncode == 0, made.stderr
    found = re.fullmatch(r"grant (g-[0-9a-f]{8}): \S+ may \S+ .* until \S+Z\n", made.stdout)
    assert found, made.stdout
    return found.group(1)


GIVE_PUSH = ("pull", "--actions", "push", "--repositories", "apps/*", "--for", "1h", "--reason",
             "INC-1: hotfix", "--by", "oncall")  # fmt: skip


async def status(proxy: RunningProxy, user: str, method: str, path: str) -> int:
    async with proxy.session.request(method, proxy.url + path, headers=proxy.auth(user)) as resp:
        await resp.read()
        return resp.status


async def _is(proxy: RunningProxy, user: str, expected: int,
              request: tuple[str, str] = PUSH) -> bool:  # fmt: skip
    return await status(proxy, user, *request) == expected


def audited(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "regproxy.audit"]


async def test_a_grant_lets_a_pull_only_user_push_until_it_is_revoked(
    make_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    proxy = await make_proxy(SETUP)
    (tmp_path / "grants.yaml").write_text("# kept as it is\n")
    with caplog.at_level("INFO", "regproxy.audit"):
        assert await status(proxy, "pull", *PUSH) == 403
        grant_id = grant_cli(tmp_path, *GIVE_PUSH)
        await until(lambda: _is(proxy, "pull", 200))
        assert await status(proxy, "pull", "PUT", "/v2/apps/api/manifests/2") == 200
        assert await status(proxy, "pull", "GET", "/v2/apps/api/manifests/2") == 200  # the ACL's
        assert await status(proxy, "pull", "DELETE", "/v2/apps/api/manifests/2") == 403  # action
        assert await status(proxy, "pull", "PUT", "/v2/apps/a/b/manifests/2") == 403  # glob
        assert await status(proxy, "other", *PUSH) == 403  # another user
    lines = audited(caplog)
    expires = (tmp_path / "grants.yaml").read_text().split("expires: '")[1][:20]
    record = {"id": grant_id, "reason": "INC-1: hotfix", "granted_by": "oncall",
              "expires": expires}  # fmt: skip
    assert lines[0]["status"] == 403 and "grant" not in lines[0]
    allowed = [line for line in lines if line["status"] == 200]
    assert [(a["user"], a["action"], a["repository"], a["grant"]) for a in allowed] == [
        ("pull", "push", "apps/web", record),
        ("pull", "push", "apps/api", record),
    ]
    assert all("grant" not in line for line in lines if line["status"] == 403)
    assert [r.path_qs for r in upstream.requests if r.method == "PUT"] == [
        "/v2/apps/web/manifests/1",
        "/v2/apps/api/manifests/2",
    ]
    revoked = regproxy("grant", "revoke", grant_id, "-c", "regproxy.yaml", cwd=tmp_path)
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked {grant_id}\n")
    assert (tmp_path / "grants.yaml").read_text().endswith("# kept as it is\n")
    await until(lambda: _is(proxy, "pull", 403))


async def test_a_grant_ends_on_the_clock_without_a_reload(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    now = int(time.time())
    ending = Grant("soon", "pull", frozenset({"push"}), ("apps/*",), now - 1, now + 5, "test")
    (tmp_path / "grants.yaml").write_text(entry_text(ending))  # there before the proxy starts
    proxy = await make_proxy(SETUP)
    assert await status(proxy, "pull", *PUSH) == 200
    loaded = proxy.state.current
    while time.time() < ending.expires:  # the positive signal: the grant's end has come
        await asyncio.sleep(0.05)
    assert await status(proxy, "pull", *PUSH) == 403
    assert proxy.state.current is loaded  # no file changed: the clock did it


async def test_a_bad_entry_disables_only_itself_and_a_broken_file_keeps_the_last_good(
    make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy(SETUP)
    grant_cli(tmp_path, *GIVE_PUSH)
    await until(lambda: _is(proxy, "pull", 200))
    path = tmp_path / "grants.yaml"
    good = path.read_text()
    other = good.replace("user: pull", "user: other")
    bad = other.replace("[push]", "[push, psuh]").replace(_id(good), "typo")
    later = other.replace("apps/*", "apps/web").replace(_id(good), "later")
    with caplog.at_level("WARNING", "regproxy.reload"):
        replace_file(path, good + bad + later)
        await until(lambda: _is(proxy, "other", 200))  # the entry after the bad one works
    line = good.count("\n") + bad.split("actions:")[0].count("\n") + 1
    assert f"{path}:{line}: grant disabled: actions: expected a list of pull, push, delete" in (
        caplog.text
    )
    assert await status(proxy, "pull", *PUSH) == 200  # the others keep working

    async def refused() -> bool:
        return f"reload failed for {path}, keeping its last good version: {path}:1:" in (
            caplog.text
        )

    with caplog.at_level("ERROR", "regproxy.reload"):
        replace_file(path, "- [not: closed\n")  # not YAML: the last good file stays
        await until(refused)
    assert await _is(proxy, "pull", 200) and await _is(proxy, "other", 200)


async def test_a_granted_pull_is_listed_in_the_catalog_and_audited(
    make_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    upstream.handlers["/v2/_catalog"] = paginating_catalog(  # type: ignore[assignment]
        ["apps/web", "library/x", "other/y"]
    )
    proxy = await make_proxy(SETUP + "acl:\n  - repositories: [library/**]\n    actions: [pull]\n")
    listed = ["library/x"]
    assert await walk_catalog(proxy, proxy.url + "/v2/_catalog", proxy.auth("pull")) == [listed]
    grant_cli(tmp_path, "pull", "--actions", "pull", "--repositories", "apps/*", "--for", "1h",
              "--reason", "read the release for the incident")  # fmt: skip
    manifest = ("GET", "/v2/apps/web/manifests/1")
    with caplog.at_level("INFO", "regproxy.audit"):
        await until(lambda: _is(proxy, "pull", 200, manifest))
        assert await status(proxy, "pull", "GET", "/v2/library/x/manifests/1") == 200
    pages = await walk_catalog(proxy, proxy.url + "/v2/_catalog", proxy.auth("pull"))
    assert pages == [["apps/web", *listed]]
    lines = audited(caplog)  # the ACL's own pull is not audited; the granted one is
    assert [(a["action"], a["repository"], a["status"]) for a in lines] == [
        ("pull", "apps/web", 200)
    ]
    assert lines[0]["grant"]["reason"] == "read the release for the incident"  # type: ignore[index]


def _id(text: str) -> str:
    found = re.search(r"id: (g-[0-9a-f]{8})", text)
    assert found
    return found.group(1)


GUARDED = """\
immutable_tags:
  - repositories: ["apps/**"]
    tags: ["v*"]
protected_deletes:
  - repositories: ["base/**"]
"""


async def test_a_grant_never_passes_immutable_tags_or_protected_deletes(
    make_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    proxy = await make_proxy(SETUP + GUARDED)
    grant_cli(tmp_path, "pull", "--actions", "push,delete", "--repositories", "apps/**", "base/**",
              "--for", "1h", "--reason", "cleanup")  # fmt: skip
    digest = "sha256:" + "a" * 64
    await until(lambda: _is(proxy, "pull", 200, ("DELETE", "/v2/apps/web/manifests/latest")))
    with caplog.at_level("INFO", "regproxy.audit"):
        assert await status(proxy, "pull", "DELETE", "/v2/apps/web/manifests/v1") == 403
        assert await status(proxy, "pull", "DELETE", f"/v2/base/img/manifests/{digest}") == 403
        assert await status(proxy, "pull", "DELETE", f"/v2/base/img/blobs/{digest}") == 403
    assert [r.path_qs for r in upstream.requests if r.method == "DELETE"] == [
        "/v2/apps/web/manifests/latest"  # only what the guards let through reached the registry
    ]
    lines = audited(caplog)
    assert [(line["status"], "grant" in line) for line in lines] == [(403, True)] * 3


async def test_token_server_mode_issues_what_a_grant_gives_until_it_ends(
    make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    ca.private_key_pem.write_to_path(str(tmp_path / "token.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "token.crt"))
    token = "token:\n  issuer: t\n  service: reg.test\n  key: token.key\n  certificate: token.crt\n"
    proxy = await make_proxy(SETUP + token)
    grant_id = grant_cli(tmp_path, "pull", "--actions", "push", "--repositories", "apps/web",
                         "--for", "2m", "--reason", "release", "--by", "oncall")  # fmt: skip
    expires = int(_expires(tmp_path / "grants.yaml"))
    scope = "scope=repository:apps/web:pull,push&scope=repository:apps/other:pull,push"
    url = f"{proxy.url}/auth?service=reg.test&{scope}"

    async def issued() -> dict[str, object]:
        async with proxy.session.get(url, headers=proxy.auth("pull")) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def granted() -> bool:
        return (await issued())["scope"] == (
            "repository:apps/web:pull,push repository:apps/other:pull"
        )

    with caplog.at_level("INFO", "regproxy.audit"):
        await until(granted)
    answer = await issued()
    payload = json.loads(base64.urlsafe_b64decode(str(answer["token"]).split(".")[1] + "=="))
    # distribution takes a token 60 s past its exp: the token ends when the grant does.
    assert payload["exp"] + 60 == expires
    assert 0 < int(str(answer["expires_in"])) <= expires - payload["iat"]
    (line, *_) = [a for a in audited(caplog) if a["action"] == "token"]
    assert line["scope"] == "repository:apps/web:pull,push" and line["user"] == "pull"
    record = {"id": grant_id, "reason": "release", "granted_by": "oncall"}
    assert line["grant"] == record | {"expires": timestamp(expires)}


def _expires(path: Path) -> float:
    found = re.search(r"expires: '([^']+)'", path.read_text())
    assert found
    return parse_moment(found.group(1))


@pytest.mark.parametrize("served", ["workers: 2\n" + SETUP], indirect=True)
async def test_every_worker_applies_a_grant_and_its_revocation(
    served: Served, tls: TlsPair
) -> None:
    auth = basic("pull", "pull-pw")
    first, second = await one_connection_per_worker(served, tls)

    async def on_both(expected: int) -> float:
        started, seen = time.monotonic(), set()
        while len(seen) < 2:
            for n, connection in enumerate((first, second)):
                if n not in seen and await connection.get(PUSH[1], auth, PUSH[0]) == expected:
                    seen.add(n)
            assert time.monotonic() - started < 10, "a worker never applied the edit"
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    assert [await c.get(PUSH[1], auth, PUSH[0]) for c in (first, second)] == [403, 403]
    grant_id = grant_cli(served.directory, *GIVE_PUSH)
    given = await on_both(200)
    revoked = regproxy("grant", "revoke", "pull", "-c", "regproxy.yaml", cwd=served.directory)
    assert revoked.stdout == "revoked every grant of pull (1)\n", revoked.stderr
    taken = await on_both(403)
    await first.close()
    await second.close()
    print(f"grant {grant_id} applied in {given:.2f}s, revoked in {taken:.2f}s on both workers")


async def test_replicas_reading_one_grants_file_apply_it_alike(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared" / "grants.yaml"
    shared.parent.mkdir()
    setup = f"grants:\n  file: {shared}\n"
    replicas = [await make_proxy(setup, directory=tmp_path / name) for name in ("a", "b")]
    grant_cli(tmp_path / "a", *GIVE_PUSH)  # made through replica a's config
    for replica in replicas:
        await until(lambda replica=replica: _is(replica, "pull", 200))  # type: ignore[misc]
    revoked = regproxy("grant", "revoke", "pull", "-c", "regproxy.yaml", cwd=tmp_path / "b")
    assert revoked.returncode == 0, revoked.stderr
    for replica in replicas:
        await until(lambda replica=replica: _is(replica, "pull", 403))  # type: ignore[misc]


def test_check_and_explain_say_what_they_see(tmp_path: Path) -> None:
    (tmp_path / "htpasswd").write_text(htpasswd_text(USERS))
    (tmp_path / "groups").write_text(GROUPS_TEXT)
    (tmp_path / "regproxy.yaml").write_text("htpasswd: htpasswd\ngroups: groups\n" + SETUP)
    grant_id = grant_cli(tmp_path, *GIVE_PUSH)
    explained = regproxy("explain", "-c", "regproxy.yaml", "pull", "push", "apps/web",
                         cwd=tmp_path)  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert lines[:2] == ["ALLOW pull push apps/web", f"  decided by: grant {grant_id} "
                         "(grants.yaml:3)"]  # fmt: skip
    assert re.fullmatch(r"  grant: pull may push apps/\* from \S+ until \S+, granted by oncall: "
                        r"INC-1: hotfix", lines[2])  # fmt: skip
    assert lines[3] == "  without it: DENY, rule built-in: valid-user"
    later = regproxy("explain", "-c", "regproxy.yaml", "--at", "2100-01-01", "pull", "push",
                     "apps/web", cwd=tmp_path)  # fmt: skip
    assert later.returncode == 3
    assert f"  note: grant {grant_id} (grants.yaml:3) ended at " in later.stdout
    before = (tmp_path / "grants.yaml").read_text().count("\n")
    with (tmp_path / "grants.yaml").open("a") as handle:
        handle.write("- id: typo\n  user: pull\n  actions: [psuh]\n")
    checked = regproxy("check", "-c", "regproxy.yaml", "--tls-cert", "x", "--tls-key", "y",
                       cwd=tmp_path)  # fmt: skip
    assert checked.returncode == 1
    where = f"grants.yaml:{before + 3}"
    assert f"{where}: grant disabled: actions: expected a list of" in checked.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("pull", "--for", "9h"), 2, "--for: at most grants.max_duration (8h), got 9h"),
        (("nobody",), 2, "USER: 'nobody' is not a user of "),
        (("robot$ci",), 2, "USER: 'robot$ci': robots have no grants"),
        (("pull", "--repositories", "${user}/**"), 2, "--repositories: '${user}/**': placeholders"),
        (("pull", "--actions", "push,fly"), 2, "--actions: expected pull, push, delete"),
        (("pull", "--reason", " "), 2, "--reason: one line of text"),
        (("pull", "--by", "on\ncall"), 2, "--by: one line of text"),
    ],
)  # fmt: skip
def test_the_cli_refuses_what_it_cannot_grant(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    (tmp_path / "htpasswd").write_text(htpasswd_text(USERS))
    (tmp_path / "regproxy.yaml").write_text("htpasswd: htpasswd\ngroups: null\n" + SETUP)
    options = dict(zip(GIVE_PUSH[1::2], GIVE_PUSH[2::2], strict=True))
    user, *changes = args
    options |= dict(zip(changes[::2], changes[1::2], strict=True))
    flat = [part for pair in options.items() for part in pair]
    made = regproxy("grant", user, *flat, "-c", "regproxy.yaml", cwd=tmp_path)
    assert made.returncode == code and message in made.stderr, made.stderr
    assert not (tmp_path / "grants.yaml").exists()
    (tmp_path / "regproxy.yaml").write_text("htpasswd: htpasswd\ngroups: null\n")
    unconfigured = regproxy("grant", "list", "-c", "regproxy.yaml", cwd=tmp_path)
    assert unconfigured.returncode == 1 and "no grants file" in unconfigured.stderr
    (tmp_path / "regproxy.yaml").write_text("htpasswd: htpasswd\ngroups: null\n"
                                            "grants:\n  file: nowhere/grants.yaml\n")  # fmt: skip
    unwritable = regproxy("grant", *GIVE_PUSH, "-c", "regproxy.yaml", cwd=tmp_path)
    assert unwritable.returncode == 1, unwritable.stderr
    missing = "nowhere/.grants.yaml.lock: cannot write: No such file or directory\n"
    assert unwritable.stderr == missing  # the directory is named, not a traceback
