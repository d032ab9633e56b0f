"""`regproxy replay` end to end: podman and skopeo traffic through the real proxy writes an
access log; replaying it against an ACL and group file edit reports what would change; then
the edit is applied to the running proxy, the logged requests are sent again by the same users,
and exactly the reported ones are answered differently. And the same for a log of the Apache
recipe (the bench's httpd.conf, run by apache2): its requests sent to a regproxy running the
proposed policy are answered as the replay said."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.processes import tool
from bench.targets import APACHE_MODULES, render
from devtools.net import free_port, wait_for_port
from devtools.processes import start, stop
from devtools.registry import Registry
from devtools.skopeo import Skopeo
from devtools.tls import TlsFiles
from proxy.http.routes import Operation, classify
from proxy.observe.logread import Logged, parse_line
from tests.conftest import basic, regproxy
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman
from tests.e2e.test_grants import wait_for

ACL = """\
- groups: [pusher]
  actions: ["*"]
- groups: [team]
  repositories: ["team/**"]
  actions: [pull, push]
- repositories: ["library/**"]
  actions: [pull]
"""
GROUPS_NOW = "pusher: testuserpush\nreaders: reader\n"
GROUPS_NEW = "pusher: testuserpush\nteam: reader\n"  # reader may push team/**; testuser loses it
# What the edit changes in the traffic below: (user, action, repositories, before, after).
EXPECTED = {
    ("reader", "push", ("team/app",), False, True),
    ("testuser", "pull", ("team/app",), True, False),
}
LOGGED = "access_log:\n  format: combined_duration\n  path: access.log\n"
Change = tuple[str, str, tuple[str, ...], bool, bool]


def traffic(host: str, tls: TlsFiles, podman: Podman, podman2: Podman, skopeo: Skopeo) -> None:
    """The pusher pushes team/app and library/base; reader pulls team/app and is refused a
    push; testuser reads both with skopeo."""
    push = f"testuserpush:{USERS['testuserpush']}"
    podman.build_small_image("localhost/t:1")
    for name in ("team/app", "library/base"):
        pushed = podman.push("localhost/t:1", f"{host}/{name}:1", tls.cert_dir, creds=push)
        assert pushed.returncode == 0, pushed.stderr
    reader = f"reader:{USERS['reader']}"
    assert podman2.pull(f"{host}/team/app:1", tls.cert_dir, creds=reader).returncode == 0
    refused = podman2.push(f"{host}/team/app:1", f"{host}/team/app:2", tls.cert_dir, creds=reader)
    assert refused.returncode != 0, refused.stderr
    for name in ("team/app", "library/base"):
        read = skopeo.inspect_raw(f"docker://{host}/{name}:1",
                                  f"testuser:{USERS['testuser']}", tls.cert_dir)  # fmt: skip
        assert read.returncode == 0, read.stderr


def replay(directory: Path, log: Path, config: Path) -> tuple[set[Change], dict[str, Any]]:
    """`regproxy replay --json` of `log` against acl.yaml and groups.new in `directory`: the
    changes it reports, and the whole report."""
    done = regproxy("replay", "-c", str(config), "--acl", "acl.yaml", "--groups", "groups.new",
                    "--json", str(log), cwd=directory)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    changes = {
        (c["user"], c["action"], tuple(c["repository_names"]), c["before"]["allowed"],
         c["after"]["allowed"])
        for c in report["changes"]
    }  # fmt: skip
    return changes, report


def decided_lines(log: Path) -> Iterator[tuple[Logged, Operation]]:
    """The logged requests of known users that got past authentication, classified."""
    for line in log.read_text().splitlines():
        logged = parse_line(line)
        assert logged is not None, line
        path, _, query = logged.target.partition("?")
        operation = classify(logged.method, path, query)
        if logged.user in USERS and logged.status != 401 and isinstance(operation, Operation):
            yield logged, operation


def denied(hostport: str, tls: TlsFiles, logged: Logged) -> bool:
    """Whether the policy refuses `logged`'s request, sent again now by the same user."""
    assert logged.user is not None
    host, port = hostport.rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), timeout=60,
                                             context=ssl.create_default_context(
                                                 cafile=str(tls.ca_cert)))  # fmt: skip
    try:
        headers = {"Authorization": basic(logged.user, USERS[logged.user])}
        body = b"" if logged.method in ("PUT", "PATCH", "POST") else None
        connection.request(logged.method, logged.target, body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read()
    finally:
        connection.close()
    # A policy refusal says "<action> access denied" (a HEAD answer has no body to say it).
    return answer.status == 403 and (logged.method == "HEAD" or b"access denied" in text)


def check_answers(hostport: str, tls: TlsFiles, log: Path, changes: set[Change]) -> int:
    """Every decided request of `log`, sent again: refused now exactly when the replay said
    the edited policy refuses it. How many answers changed."""
    after = {(user, action, name): now for user, action, names, _, now in changes
             for name in names}  # fmt: skip
    flipped = 0
    for logged, operation in decided_lines(log):
        action = operation.action or operation.kind
        was = logged.status == 403
        expected = after.get((logged.user, action, operation.repository))
        now = denied(hostport, tls, logged)
        assert now == (was if expected is None else not expected), (logged, was, now)
        flipped += now != was
    return flipped


@pytest.fixture
def proxy(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[RegproxyProcess]:
    running = start_regproxy(tmp_path / "proxy", registry.url, tls, LOGGED, groups=GROUPS_NOW)
    yield running
    running.stop()


def test_a_replayed_edit_changes_exactly_what_the_running_proxy_then_changes(
    proxy: RegproxyProcess, tls: TlsFiles, podman: Podman, podman2: Podman, skopeo: Skopeo,
    tmp_path: Path,
) -> None:  # fmt: skip
    traffic(proxy.hostport, tls, podman, podman2, skopeo)
    log = shutil.copy(proxy.directory / "access.log", tmp_path / "logged.log")
    (proxy.directory / "acl.yaml").write_text(ACL)
    (proxy.directory / "groups.new").write_text(GROUPS_NEW)
    changes, report = replay(proxy.directory, Path(log), proxy.directory / "regproxy.yaml")
    assert changes == EXPECTED
    assert report["refused_now_but_answered_in_log"]["count"] == 0
    assert report["not_decided"]["before_authentication"]["count"] > 0
    # The edit, applied to the running proxy: the group file, then the config naming the ACL.
    proxy.groups.write_text(GROUPS_NEW)
    config = proxy.directory / "regproxy.yaml"
    config.write_text(config.read_text() + "acl: acl.yaml\n")
    probe = Logged(0, "", "testuser", "GET", "/v2/team/app/manifests/1", 200)
    wait_for(lambda: denied(proxy.hostport, tls, probe), "the edit never applied")
    flipped = check_answers(proxy.hostport, tls, Path(log), changes)
    assert flipped == sum(c["count"] for c in report["changes"])


@pytest.fixture
def apache(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[tuple[str, Path]]:
    """The recipe's Apache httpd (bench/templates/apache.conf) before the registry: its
    host:port and its directory (access.log, the users, the groups)."""
    # Apache's workers run as daemon: they read the user files from a directory it can enter.
    directory = Path(tempfile.mkdtemp(prefix="replay-apache-"))
    directory.chmod(0o755)
    for user, flag in (("testuser", "-cbB"), ("testuserpush", "-bB"), ("reader", "-bm")):
        subprocess.run(["htpasswd", flag, str(directory / "htpasswd"), user, USERS[user]],
                       check=True, capture_output=True)  # fmt: skip
    (directory / "groups").write_text(GROUPS_NOW)
    for name in ("htpasswd", "groups"):
        (directory / name).chmod(0o644)
    port = free_port()
    values = {"dir": directory, "listen": f"127.0.0.1:{port}", "modules": APACHE_MODULES,
              "registry": registry.url.removeprefix("http://"), "cert": tls.server_cert,
              "key": tls.server_key, "htpasswd": directory / "htpasswd",
              "groups": directory / "groups"}  # fmt: skip
    config = render("apache.conf", directory / "apache.conf", values)
    argv = [tool("apache2"), "-d", str(directory), "-f", str(config), "-DFOREGROUND"]
    process = start(argv, directory / "apache.out", cwd=directory)
    try:
        wait_for_port(port, process, 20)
        yield f"localhost:{port}", directory
    finally:
        stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def test_an_apache_recipe_log_replays_and_regproxy_answers_as_it_said(
    apache: tuple[str, Path], registry: Registry, tls: TlsFiles, podman: Podman,
    podman2: Podman, skopeo: Skopeo, tmp_path: Path,
) -> None:  # fmt: skip
    hostport, directory = apache
    traffic(hostport, tls, podman, podman2, skopeo)
    log = Path(shutil.copy(directory / "access.log", tmp_path / "apache.log"))
    # The recipe's policy in regproxy's terms (what `regproxy import` makes of its httpd.conf).
    work = tmp_path / "replay"
    work.mkdir()
    shutil.copy(directory / "htpasswd", work / "htpasswd")
    (work / "groups").write_text(GROUPS_NOW)
    (work / "groups.new").write_text(GROUPS_NEW)
    (work / "acl.yaml").write_text(ACL)
    (work / "regproxy.yaml").write_text("htpasswd: htpasswd\ngroups: groups\n")
    changes, report = replay(work, log, work / "regproxy.yaml")
    # Apache answers a refused group with 401, as a wrong password: reader's push is counted
    # as refused before authentication, not decided; testuser's pull is the change.
    assert changes == {c for c in EXPECTED if c[0] == "testuser"}
    assert report["refused_now_but_answered_in_log"]["count"] == 0
    lines = log.read_text().splitlines()
    refused = [line for line in lines if " reader " in line and '" 401 ' in line]
    assert refused
    assert report["not_decided"]["before_authentication"]["count"] >= len(refused)
    # regproxy with the proposed policy, before the same registry, answers as the replay said.
    (tmp_path / "proposed").mkdir()
    (tmp_path / "proposed" / "acl.yaml").write_text(ACL)
    proposed = start_regproxy(tmp_path / "proposed", registry.url, tls, "acl: acl.yaml\n",
                              groups=GROUPS_NEW)  # fmt: skip
    try:
        flipped = check_answers(proposed.hostport, tls, log, changes)
        assert flipped == sum(c["count"] for c in report["changes"])
    finally:
        proposed.stop()
