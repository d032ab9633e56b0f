"""One snapshot per request, built off the event loop; a startup that fails halfway leaves
nothing behind. In-process against the fake upstream."""

from __future__ import annotations

import asyncio
import operator
import os
import ssl
import threading
from pathlib import Path

import pytest

from devtools.net import free_port
from proxy.authn import AuthResult, Outcome
from proxy.authn.chain import Authenticators
from proxy.authn.credentials import PasswordHash
from proxy.conf.reload import State
from proxy.conf.snapshot import Snapshot, load_snapshot
from proxy.serve import server as server_module
from proxy.serve.server import Server
from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    TlsPair,
    basic,
    free_socket,
    htpasswd_text,
    replace_file,
    write_setup,
)


async def test_a_request_is_decided_by_the_snapshot_it_started_with(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push starts; while its password is being checked the group file drops the user from
    `pusher` and the reload completes. The push is decided by the groups it started with; the
    next request by the new ones."""
    proxy = await make_proxy()
    checking, release = threading.Event(), threading.Event()
    verify = PasswordHash.verify

    def slow_verify(self: PasswordHash, password: bytes) -> bool:
        checking.set()
        release.wait(30)
        return verify(self, password)

    monkeypatch.setattr(PasswordHash, "verify", slow_verify)
    push = asyncio.ensure_future(
        proxy.session.post(proxy.url + "/v2/push/app/blobs/uploads/", headers=proxy.auth("push"))
    )
    await asyncio.to_thread(checking.wait, 30)
    replace_file(proxy.groups, "readers: other\n")  # push is no longer a pusher
    monkeypatch.setattr(PasswordHash, "verify", verify)  # the reload's own dummy check
    assert await proxy.state.reload("test")
    release.set()
    async with await push as resp:
        assert resp.status == 200  # decided by the snapshot it started with
    async with proxy.session.post(
        proxy.url + "/v2/push/app/blobs/uploads/", headers=proxy.auth("push")
    ) as resp:
        assert resp.status == 403  # the next request sees the new groups


async def test_requests_are_answered_while_a_16_mib_htpasswd_file_loads(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy()
    async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
        assert resp.status == 200  # pull's password is verified and remembered
    line = "user{:06d}:{{SHA}}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n"
    count = (15 * 1024 * 1024) // len(line.format(0))
    text = htpasswd_text(USERS) + "".join(line.format(n) for n in range(count))
    assert 15 * 1024 * 1024 < len(text) < 16 * 1024 * 1024
    proxy.htpasswd.write_text(text)
    loading = asyncio.ensure_future(proxy.state.reload("test"))
    answered_while_loading = 0
    while not loading.done():
        async with proxy.session.get(proxy.url + "/v2/", headers=proxy.auth("pull")) as resp:
            assert resp.status == 200
        answered_while_loading += not loading.done()
    assert await loading
    assert answered_while_loading > 0
    async with proxy.session.get(
        proxy.url + "/v2/", headers={"Authorization": basic("user000042", "test")}
    ) as resp:
        assert resp.status == 200  # the new file is in force


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


STEPS = [
    ("LocalStore", "start"),
    ("State", "start"),
    ("Forwarder", "__init__"),
    ("Listener", "start"),
    ("Server", "_start_chores"),
    ("Server", "_start_admin"),
]


@pytest.mark.parametrize(("owner", "method"), STEPS, ids=[f"{o}.{m}" for o, m in STEPS])
async def test_a_startup_failing_at_any_step_leaves_nothing_behind(
    owner: str,
    method: str,
    tmp_path: Path,
    tls: TlsPair,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "htpasswd").write_text(htpasswd_text(USERS))
    config = tmp_path / "regproxy.yaml"
    metrics_port = free_port()
    config.write_text(
        f"upstream: {upstream.url}\nhtpasswd: htpasswd\ngroups: null\n"
        f"tls:\n  cert: {tls.cert}\n  key: {tls.key}\n"
        f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n"
    )
    snapshot, _ = load_snapshot(config, {})
    threads, tasks, fds = threading.active_count(), len(asyncio.all_tasks()), _fds()

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{owner}.{method} failed")

    monkeypatch.setattr(getattr(server_module, owner), method, fail)
    sock = free_socket()
    server = Server(snapshot, config, {})
    with pytest.raises(RuntimeError, match="failed"):
        await server.startup(sock)
    sock.close()
    await server.shutdown()  # a second shutdown is harmless

    def settled() -> bool:
        return (
            threading.active_count() <= threads
            and len(asyncio.all_tasks()) == tasks
            and _fds() <= fds
        )

    # Executor threads exit, transports close and the fake upstream's handlers of a probe
    # that was under way finish, on their own turn.
    for _ in range(200):
        if settled():
            break
        await asyncio.sleep(0.01)
    assert threading.active_count() <= threads
    assert len(asyncio.all_tasks()) == tasks
    assert _fds() <= fds


class RecordingBackend:
    """An Authenticator that records when it is closed."""

    def __init__(self) -> None:
        self.closed = False

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        return AuthResult(Outcome.NO_SUCH_USER)

    def close(self) -> None:
        self.closed = True


class Backends:
    """Each snapshot's one backend: a new one, or the previous snapshot's while `keep`."""

    def __init__(self) -> None:
        self.built: list[RecordingBackend] = []
        self.keep = False
        self.failure: Exception | None = None  # raised instead of building

    def attach(self, snapshot: Snapshot, previous: Snapshot | None) -> Authenticators:
        if self.failure is not None:
            raise self.failure
        if previous is None or not self.keep:
            self.built.append(RecordingBackend())
        return Authenticators((self.built[-1],), snapshot.users)


async def started_state(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream, backends: Backends
) -> State:
    config = write_setup(tmp_path, tls, upstream.url)
    state = State(load_snapshot(config, {})[0], config, {}, backends.attach)
    await state.start()
    return state


async def test_a_backend_is_closed_only_after_the_requests_holding_it_finish(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """A reload that replaces a backend (an LDAP pool whose settings changed) closes the old
    one only once the last request that started with it has finished."""
    backends = Backends()
    built = backends.built
    state = await started_state(tmp_path, tls, upstream, backends)
    first = state.enter()  # a request under way
    assert await state.reload("test")
    assert state.current is not first and not built[0].closed
    second = state.enter()
    state.leave(second)
    assert not built[0].closed  # the first request still holds it
    state.leave(first)
    assert built[0].closed and not built[1].closed
    state.close()
    assert built[1].closed


async def test_a_backend_an_older_request_still_holds_stays_open_across_two_reloads(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream
) -> None:
    """The first reload keeps the backend (its settings did not change), the second replaces
    it: while a request that started before both is still running, the backend stays open."""
    backends = Backends()
    built = backends.built
    state = await started_state(tmp_path, tls, upstream, backends)
    first = state.enter()  # a request under way
    backends.keep = True
    assert await state.reload("unchanged backend")
    backends.keep = False
    assert await state.reload("new backend")
    assert len(built) == 2
    assert not built[0].closed  # the first request still holds it
    state.leave(first)
    assert built[0].closed and not built[1].closed
    state.close()


async def test_backends_that_cannot_be_built_keep_the_last_good_snapshot(
    tmp_path: Path, tls: TlsPair, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Building a backend fails (a CA file swapped for garbage after it was checked): the
    reload is refused and logged like a bad edit, and the next one applies."""
    backends = Backends()
    state = await started_state(tmp_path, tls, upstream, backends)
    good = state.current
    backends.failure = ssl.SSLError("no certificate in the CA file")
    with caplog.at_level("ERROR", "regproxy.reload"):
        assert not await state.reload("test")
    assert state.current is good
    assert "cannot build the authentication backends: " in caplog.text
    backends.failure = None
    assert await state.reload("test")
    assert state.current is not good
    state.close()


def test_a_reload_reuses_what_unchanged_files_built(tmp_path: Path, tls: TlsPair) -> None:
    """An edit of the group file re-reads the group file alone: the htpasswd users and the
    ACL's rules are the previous snapshot's. A file kept at its last good version is read
    again at every reload (and still reported as kept), unchanged or not."""
    config = write_setup(tmp_path, tls, "http://127.0.0.1:9", "acl: acl.yaml\n")
    acl = tmp_path / "acl.yaml"
    acl.write_text("- {groups: [pushers], actions: [pull, push]}\n")
    first, _ = load_snapshot(config, {})
    replace_file(tmp_path / "groups", "pushers: push pull\n")
    second, _ = load_snapshot(config, {}, first)
    assert second.users.htpasswd is first.users.htpasswd
    assert all(map(operator.is_, second.rules, first.rules)) and second.rules is not first.rules
    assert second.users.groups_of("pull") == {"pushers"} != first.users.groups_of("pull")
    replace_file(acl, "- {groups: [pushers], actions: [pull, pish]}\n")  # broken: kept
    third, _ = load_snapshot(config, {}, second)
    assert third.rules == second.rules and [p for p, _ in third.kept] == [acl]
    replace_file(tmp_path / "groups", "pushers: push\n")
    fourth, _ = load_snapshot(config, {}, third)
    assert [p for p, _ in fourth.kept] == [acl]  # still broken, still said
    assert fourth.users.htpasswd is first.users.htpasswd
    replace_file(acl, "- {users: [pull], actions: [pull]}\n")
    fifth, _ = load_snapshot(config, {}, fourth)
    assert not fifth.kept and fifth.rules[0].users == {"pull"}
    sixth, _ = load_snapshot(config, {}, fifth, reread=True)  # SIGHUP: every file read again
    assert sixth.users.htpasswd is not fifth.users.htpasswd
    assert not any(map(operator.is_, sixth.rules, fifth.rules))
    assert sixth.users.htpasswd == fifth.users.htpasswd and sixth.rules == fifth.rules
