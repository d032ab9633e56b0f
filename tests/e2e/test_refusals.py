"""Every request regproxy answers itself (tests/unit/test_routes.py REFUSALS and
CATALOG_REFUSALS), replayed against the real docker-registry directly and through the real
regproxy: the registry answers what the table says it does, regproxy answers the table's status
and code (and the registry's `Allow` on a 405), and none of these requests reaches the
registry."""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import ssl
import time

import pytest

from devtools.registry import Registry
from devtools.tls import TlsFiles
from tests.e2e.conftest import USERS, RegproxyProcess
from tests.unit.test_routes import CATALOG_REFUSALS, REFUSALS, Answer

pytestmark = pytest.mark.e2e

ANSWERS: list[Answer] = [param.values[0] for param in REFUSALS + CATALOG_REFUSALS]  # type: ignore[misc]
ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]+\] "(\S+) (\S+) HTTP/1\.1"', re.MULTILINE)
Reply = tuple[int, dict[str, str], bytes]


def send(
    connection: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str]
) -> Reply:
    """One request with this exact request-target (no client-side normalization)."""
    body = b"" if method in ("POST", "PUT", "PATCH") else None
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def target(answer: Answer) -> str:
    return answer.path + (f"?{answer.query}" if answer.query else "")


def access_lines(registry: Registry) -> list[tuple[str, str]]:
    return ACCESS_LINE.findall(registry.log_text())


def test_refusals_match_the_table_and_never_reach_the_registry(
    registry: Registry, regproxy: RegproxyProcess, tls: TlsFiles
) -> None:
    token = base64.b64encode(f"testuserpush:{USERS['testuserpush']}".encode()).decode()
    auth = {"Authorization": f"Basic {token}"}
    context = ssl.create_default_context(cafile=str(tls.ca_cert))

    def direct(answer: Answer) -> Reply:
        connection = http.client.HTTPConnection(registry.hostport, timeout=10)
        return send(connection, answer.method, target(answer), {})

    def proxied(method: str, path: str) -> Reply:
        connection = http.client.HTTPSConnection(
            "localhost", regproxy.port, context=context, timeout=10
        )
        return send(connection, method, path, auth)

    wrong: list[str] = []
    allows: dict[str, str] = {}
    for answer in ANSWERS:
        status, headers, _ = direct(answer)
        if status != answer.registry:
            wrong.append(f"registry {answer.method} {target(answer)}: {status}, table says "
                         f"{answer.registry}")  # fmt: skip
        if status == 405:
            allows[target(answer)] = headers.get("Allow", "")

    seen_before = len(access_lines(registry))
    for answer in ANSWERS:
        status, headers, body = proxied(answer.method, target(answer))
        code = json.loads(body)["errors"][0]["code"] if body else answer.code  # HEAD: no body
        if (status, code) != (answer.status, answer.code):
            wrong.append(f"regproxy {answer.method} {target(answer)}: {status} {code}, table "
                         f"says {answer.status} {answer.code}")  # fmt: skip
        allow = allows.get(target(answer))
        if allow is not None and headers.get("Allow") != allow:
            wrong.append(f"regproxy {answer.method} {target(answer)}: Allow "
                         f"{headers.get('Allow')!r}, the registry's {allow!r}")  # fmt: skip
    assert wrong == []

    # A request that is forwarded, after all the refused ones: once the registry has logged
    # it, every request before it would have been logged too.
    marker = f"/v2/marker-{secrets.token_hex(4)}/tags/list"
    assert proxied("GET", marker)[0] == 404  # NAME_UNKNOWN, from the registry
    deadline = time.monotonic() + 10
    while ("GET", marker) not in access_lines(registry)[seen_before:]:
        assert time.monotonic() < deadline, "the registry never logged the forwarded request"
        time.sleep(0.05)
    assert access_lines(registry)[seen_before:] == [("GET", marker)]
