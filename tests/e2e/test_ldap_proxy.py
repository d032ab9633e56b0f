"""LDAP through the whole proxy: podman logs in with directory users, LDAP groups feed the
recipe's push rule, htpasswd users keep working, and a directory that is down is a 503."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.registry import Registry
from devtools.slapd import GROUPS, PASSWORDS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, Slapd
from devtools.tls import TlsFiles, https_status
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    with Slapd(tmp_path / "slapd") as server:
        yield server


@pytest.fixture
def ldap_proxy(
    tmp_path: Path, registry: Registry, tls: TlsFiles, slapd: Slapd
) -> Iterator[RegproxyProcess]:
    extra = (
        "ldap:\n"
        f"  url: {slapd.url}\n"
        f"  bind_dn: {SERVICE_DN}\n"
        f"  bind_password: {SERVICE_PASSWORD}\n"
        f"  user_base: {PEOPLE}\n"
        '  user_filter: "(uid={user})"\n'
        "  member_of_attribute: memberOf\n"
        f"  group_base: {GROUPS}\n"
        "  timeout: 2\n"
    )
    running = start_regproxy(tmp_path / "proxy", registry.url, tls, extra)
    yield running
    running.stop()


def status(proxy: RegproxyProcess, tls: TlsFiles, user: str, password: str) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return https_status(f"https://{proxy.hostport}/v2/", f"Basic {token}", tls.ca_cert, 20)


def test_directory_users_log_in_push_by_group_and_fail_closed(
    ldap_proxy: RegproxyProcess,
    registry: Registry,
    tls: TlsFiles,
    slapd: Slapd,
    podman: Podman,
) -> None:
    host = ldap_proxy.hostport
    # alice is in the LDAP group `pusher`, bob only in `developers`.
    assert podman.login(host, "alice", PASSWORDS["alice"], tls.cert_dir).returncode == 0
    podman.build_small_image("localhost/l:1")
    pushed = podman.push("localhost/l:1", f"{host}/team/app:1", tls.cert_dir,
                         creds=f"alice:{PASSWORDS['alice']}")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    refused = podman.push("localhost/l:1", f"{host}/team/app:2", tls.cert_dir,
                          creds=f"bob:{PASSWORDS['bob']}")  # fmt: skip
    assert refused.returncode != 0
    assert registry.tags("team/app") == ["1"]
    pulled = podman.pull(f"{host}/team/app:1", tls.cert_dir, creds=f"bob:{PASSWORDS['bob']}")
    assert pulled.returncode == 0, pulled.stderr

    assert status(ldap_proxy, tls, "alice", "wrong") == 401
    assert status(ldap_proxy, tls, "*", PASSWORDS["alice"]) == 401
    assert status(ldap_proxy, tls, "alice)(uid=*", PASSWORDS["alice"]) == 401
    assert status(ldap_proxy, tls, "testuser", USERS["testuser"]) == 200  # htpasswd first

    slapd.stop()
    # A directory that cannot answer: 503 for its users, never an allow or a fall-through.
    assert status(ldap_proxy, tls, "carol", PASSWORDS["carol"]) == 503
    assert status(ldap_proxy, tls, "testuser", USERS["testuser"]) == 200
    assert "authentication backend unavailable" in ldap_proxy.log()
    slapd.start()
    assert status(ldap_proxy, tls, "carol", PASSWORDS["carol"]) == 200
