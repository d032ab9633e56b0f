"""A break-glass grant end to end: `regproxy grant` lets a pull-only user push with podman to a
real docker-registry for the grant's duration and not one second longer, through the proxy and
in token server mode (where the registry itself stops taking the token when the grant ends),
every use audited with the grant."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devtools.registry import Registry
from devtools.tls import TlsFiles
from proxy.core.moments import parse_moment
from tests.conftest import ENV, basic
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman
from tests.e2e.test_token import fetch_token, token_registry

GRANTS = "grants:\n  file: grants.yaml\naudit_log: audit.log\n"
LASTS = 30  # seconds: room for a push on a busy machine, short enough to wait for its end
PUSH_TEAM = ("reader", "--actions", "push", "--repositories", "team/*", "--for", f"{LASTS}s",
             "--by", "oncall")  # fmt: skip


def grant(proxy: RegproxyProcess, *args: str) -> tuple[str, float]:
    """`regproxy grant ARGS` against the proxy's config: the grant's id and end."""
    config = str(proxy.directory / "regproxy.yaml")
    made = subprocess.run(
        [sys.executable, "-m", "proxy", "grant", *args, "-c", config],
        env=ENV, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    found = re.fullmatch(r"grant (\S+): .* until (\S+)\n", made.stdout)
    assert found, made.stdout
    return found.group(1), parse_moment(found.group(2))


def upload_start(url: str, authorization: str, tls: TlsFiles) -> int:
    """The status of starting a blob upload (push rights, nothing stored) at `url`."""
    where = urlsplit(url)
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    connection = http.client.HTTPSConnection(
        where.hostname or "localhost", where.port, context=context, timeout=30
    )
    try:
        headers = {"Authorization": authorization, "Content-Length": "0"}
        connection.request("POST", where.path, body=b"", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_for(check: Callable[[], bool], what: str, seconds: float = 15) -> None:
    """Poll until `check()` holds: the positive signal a test waits for."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wait_until(moment: float) -> None:
    """Until the wall clock reaches `moment` (a grant's end)."""
    while time.time() < moment:
        time.sleep(min(0.5, max(0.01, moment - time.time())))


def audit_lines(proxy: RegproxyProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in (proxy.directory / "audit.log").read_text().splitlines()]


def a_reader_who_cannot_push(host: str, tls: TlsFiles, podman: Podman, podman2: Podman) -> str:
    """team/app:1 pushed by the pusher and pulled by `reader` (podman2), whose push is denied:
    reader's credentials."""
    podman.build_small_image("localhost/t:1")
    pushed = podman.push("localhost/t:1", f"{host}/team/app:1", tls.cert_dir,
                         creds=f"testuserpush:{USERS['testuserpush']}")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    reader = f"reader:{USERS['reader']}"
    assert podman2.pull(f"{host}/team/app:1", tls.cert_dir, creds=reader).returncode == 0
    refused = podman2.push(f"{host}/team/app:1", f"{host}/team/app:2", tls.cert_dir, creds=reader)
    assert refused.returncode != 0 and "denied" in refused.stderr.lower(), refused.stderr
    return reader


@pytest.fixture
def proxy(tmp_path: Path, registry: Registry, tls: TlsFiles) -> Iterator[RegproxyProcess]:
    running = start_regproxy(tmp_path / "proxy", registry.url, tls, GRANTS)
    yield running
    running.stop()


def test_a_grant_lets_a_pull_only_user_push_for_its_duration_and_no_longer(
    proxy: RegproxyProcess, registry: Registry, tls: TlsFiles, podman: Podman, podman2: Podman
) -> None:
    host = proxy.hostport
    reader = a_reader_who_cannot_push(host, tls, podman, podman2)
    grant_id, ends = grant(proxy, *PUSH_TEAM, "--reason", "INC-9: ship the fix")
    uploads = f"https://{host}/v2/team/app/blobs/uploads/"
    auth = basic("reader", USERS["reader"])
    wait_for(lambda: upload_start(uploads, auth, tls) == 202, "the grant never applied")
    during = podman2.push(f"{host}/team/app:1", f"{host}/team/app:2", tls.cert_dir, creds=reader)
    assert during.returncode == 0, f"{during.stderr}\n(a push outlasting the grant: raise LASTS)"
    wait_until(ends)
    after = podman2.push(f"{host}/team/app:1", f"{host}/team/app:3", tls.cert_dir, creds=reader)
    assert after.returncode != 0 and "denied" in after.stderr.lower(), after.stderr
    assert upload_start(uploads, auth, tls) == 403
    tags = registry.root / "docker/registry/v2/repositories/team/app/_manifests/tags"
    assert sorted(p.name for p in tags.iterdir()) == ["1", "2"]
    granted = [line for line in audit_lines(proxy) if "grant" in line]
    assert granted and all(line["user"] == "reader" for line in granted)
    assert {json.dumps(line["grant"], sort_keys=True) for line in granted} == {
        json.dumps({"id": grant_id, "reason": "INC-9: ship the fix", "granted_by": "oncall",
                    "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends))},
                   sort_keys=True)
    }  # fmt: skip
    manifest = [line for line in granted if line["reference"] == "2"]
    assert [(line["action"], line["status"]) for line in manifest] == [("push", 201)]
    assert all(line["status"] == 403 and "grant" not in line
               for line in audit_lines(proxy) if line["reference"] == "3")  # fmt: skip


@pytest.fixture
def token_setup(tmp_path: Path, tls: TlsFiles) -> Iterator[tuple[RegproxyProcess, Registry]]:
    with token_registry(tmp_path, tls, GRANTS, expiry=300) as (proxy, registry, _):
        yield proxy, registry


def test_token_server_mode_a_grants_token_ends_with_the_grant(
    token_setup: tuple[RegproxyProcess, Registry], tls: TlsFiles, podman: Podman,
    podman2: Podman,
) -> None:  # fmt: skip
    proxy, registry = token_setup
    host = f"localhost:{registry.port}"
    reader = a_reader_who_cannot_push(host, tls, podman, podman2)
    grant_id, ends = grant(proxy, *PUSH_TEAM, "--reason", "release")
    scope = "repository:team/app:pull,push"
    wait_for(lambda: fetch_token(proxy, tls, "reader", scope)["scope"] == scope,
             "the grant never applied")  # fmt: skip
    token = str(fetch_token(proxy, tls, "reader", scope)["token"])  # kept past the grant's end
    uploads = f"{registry.url}/v2/team/app/blobs/uploads/"
    assert upload_start(uploads, f"Bearer {token}", tls) == 202  # the registry takes it now
    during = podman2.push(f"{host}/team/app:1", f"{host}/team/app:2", tls.cert_dir, creds=reader)
    assert during.returncode == 0, f"{during.stderr}\n(a push outlasting the grant: raise LASTS)"
    wait_until(ends)
    # The same token, a second later: its exp plus the registry's leeway is the grant's end.
    assert upload_start(uploads, f"Bearer {token}", tls) == 401
    after = podman2.push(f"{host}/team/app:1", f"{host}/team/app:3", tls.cert_dir, creds=reader)
    assert after.returncode != 0 and "denied" in after.stderr.lower(), after.stderr
    assert fetch_token(proxy, tls, "reader", scope)["scope"] == "repository:team/app:pull"
    tags = registry.root / "docker/registry/v2/repositories/team/app/_manifests/tags"
    assert sorted(p.name for p in tags.iterdir()) == ["1", "2"]
    tokens = [line for line in audit_lines(proxy) if line["action"] == "token"]
    assert tokens and {(line["user"], line["scope"], line["grant"]["id"])  # type: ignore[index]
                       for line in tokens} == {("reader", scope, grant_id)}  # fmt: skip
