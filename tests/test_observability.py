"""Metrics scraped as Prometheus does, the health answer, access log formats, and log files
reopened on SIGUSR1 (logrotate)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509

from devtools.net import free_port
from proxy.observe.accesslog import json_text
from tests import apache_log
from tests.conftest import (
    USERS,
    FakeUpstream,
    ProxyFactory,
    Served,
    TlsPair,
    basic,
    htpasswd_text,
    replace_file,
    samples,
    scrape,
    until,
)

PULL = {"Authorization": basic("pull", USERS["pull"])}


async def written(path: Path, text: str) -> None:
    """Wait until `text` is in the file (bounded: a broken run fails, not hangs)."""
    for _ in range(200):
        if path.exists() and text in path.read_text():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{text!r} never written to {path}")


async def test_metrics_count_requests_failures_bytes_and_latency(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await make_proxy(f"metrics:\n  listen: 127.0.0.1:{free_port()}\n")
    port = proxy.server.metrics_port
    assert port is not None
    before = samples((await scrape(port))[1])
    for _ in range(3):
        async with proxy.session.get(proxy.url + "/v2/a/manifests/1", headers=PULL) as resp:
            assert resp.status == 200
    async with proxy.session.get(
        proxy.url + "/v2/", headers={"Authorization": basic("pull", "wrong")}
    ) as resp:
        assert resp.status == 401
    async with proxy.session.put(
        proxy.url + "/v2/a/manifests/1", headers={**PULL}, data=b"x" * 1000
    ) as resp:
        assert resp.status == 403
    async with proxy.session.options(proxy.url + "/v2/") as resp:
        assert resp.status == 405
    status, text = await scrape(port)
    assert status == 200
    after = samples(text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("regproxy_requests_total", action="pull", status="200") == 3
    assert delta("regproxy_requests_total", action="push", status="403") == 1
    assert delta("regproxy_requests_total", action="ping", status="401") == 1
    assert delta("regproxy_requests_total", action="refused", status="405") == 1
    assert delta("regproxy_auth_failures_total", reason="invalid") == 1
    assert delta("regproxy_response_bytes_total") == 3 * len(b"{}")
    assert delta("regproxy_upstream_latency_seconds_count") == 3
    assert after[("regproxy_inflight_transfers", ())] == 0


async def test_health_says_whether_the_upstream_answers(make_proxy: ProxyFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy(f"metrics:\n  listen: 127.0.0.1:{free_port()}\n")
    port = proxy.server.metrics_port
    assert port is not None
    status, body = await scrape(port, "/health")
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert samples((await scrape(port))[1])[("regproxy_upstream_up", ())] == 1
    snapshot = proxy.state.current
    proxy.state.current = replace(snapshot, config=replace(snapshot.config, upstream=dead))
    status, body = await scrape(port, "/health")
    assert (status, json.loads(body)) == (503, {"status": "upstream unavailable", "upstream": dead})
    # Asked again at the scrape: no traffic, no health check needed to see it.
    assert samples((await scrape(port))[1])[("regproxy_upstream_up", ())] == 0
    assert (await scrape(port, "/v2/"))[0] == 404


async def test_live_answers_while_the_upstream_is_down(make_proxy: ProxyFactory) -> None:
    """A liveness probe on /live does not restart a proxy whose registry is down."""
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy(f"metrics:\n  listen: 127.0.0.1:{free_port()}\n", upstream_url=dead)
    port = proxy.server.metrics_port
    assert port is not None
    assert (await scrape(port, "/health"))[0] == 503
    status, body = await scrape(port, "/live")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "served", ["access_log:\n  format: json\n  path: access.jsonl\n"], indirect=True
)
async def test_json_access_log_and_sigusr1_reopen(served: Served) -> None:
    log_file = served.directory / "access.jsonl"
    async with served.session.get(served.url + "/v2/", headers=PULL) as resp:
        assert resp.status == 200
    await written(log_file, "/v2/")
    first = json.loads(log_file.read_text().splitlines()[0])
    assert first["user"] == "pull" and first["status"] == 200 and first["path"] == "/v2/"
    assert first["duration_ms"] >= 0 and first["client"] == "127.0.0.1"
    rotated = served.directory / "access.jsonl.1"
    log_file.rename(rotated)  # what logrotate does, then it sends SIGUSR1
    served.process.send_signal(signal.SIGUSR1)
    await written(served.directory / "regproxy.err", "log files reopened")
    async with served.session.get(served.url + "/v2/a/tags/list", headers=PULL) as resp:
        assert resp.status == 200
    await written(log_file, "/v2/a/tags/list")
    assert json.loads(log_file.read_text())["path"] == "/v2/a/tags/list"
    assert "/v2/a/tags/list" not in rotated.read_text()


BEHIND_A_PROXY = (
    "trusted_proxies: [127.0.0.0/8]\naudit_log: audit.log\n"
    "access_log:\n  format: json\n  path: access.jsonl\n"
)


@pytest.mark.parametrize("served", [BEHIND_A_PROXY], indirect=True)
async def test_the_access_and_audit_logs_name_the_same_client(served: Served) -> None:
    """#23 (left open): behind a trusted proxy the access log named the socket peer (the
    proxy) while the audit log named the client from X-Forwarded-For. Both name the client
    as regproxy believes it."""
    push = {
        "Authorization": basic("push", USERS["push"]),
        "X-Forwarded-For": "198.51.100.9, 203.0.113.7",  # 127.0.0.1 is a trusted proxy
    }
    path = "/v2/team/app/manifests/v1"
    async with served.session.put(served.url + path, headers=push, data=b"{}") as resp:
        assert resp.status == 200
    await written(served.directory / "access.jsonl", path)
    await written(served.directory / "audit.log", '"action": "push"')
    (access,) = map(json.loads, (served.directory / "access.jsonl").read_text().splitlines())
    (audit,) = map(json.loads, (served.directory / "audit.log").read_text().splitlines())
    assert access["client"] == audit["client"] == "203.0.113.7"


@pytest.mark.parametrize(
    "served", ["workers: 2\nmetrics:\n  listen: 127.0.0.1:{free_port}\n"], indirect=True
)
async def test_metrics_add_up_across_workers(served: Served, tls: TlsPair) -> None:
    config = (served.directory / "regproxy.yaml").read_text()
    port = int(re.search(r"listen: 127\.0\.0\.1:(\d+)\n$", config).group(1))  # type: ignore[union-attr]
    for _ in range(40):  # new connections: spread over both workers
        connector = aiohttp.TCPConnector(ssl=tls.client_context())
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(served.url + "/v2/", headers=PULL) as resp,
        ):
            assert resp.status == 200
    ping_ok = ("regproxy_requests_total", (("action", "ping"), ("status", "200")))
    for _ in range(200):  # the counter is written when each answer has gone out
        if samples((await scrape(port))[1]).get(ping_ok) == 40:
            break
        await asyncio.sleep(0.025)
    for _ in range(5):  # whichever worker answers the scrape, the sum is the same
        values = samples((await scrape(port))[1])
        assert values[ping_ok] == 40


def not_after(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    "served", ["workers: 2\nmetrics:\n  listen: 127.0.0.1:{free_port}\n"], indirect=True
)
async def test_the_certificate_expiry_metric_follows_a_reload(served: Served) -> None:
    """Every worker tells when the certificate it serves expires, from start and after a
    renewed one is loaded (the lowest of the workers' values while they differ)."""
    config = (served.directory / "regproxy.yaml").read_text()
    port = int(re.search(r"listen: 127\.0\.0\.1:(\d+)\n$", config).group(1))  # type: ignore[union-attr]
    expiry = ("regproxy_certificate_expiry_timestamp_seconds", ())
    values = samples((await scrape(port))[1])
    assert values[expiry] == not_after((served.directory / "server.crt").read_bytes())
    assert values[("regproxy_upstream_up", ())] == 1
    assert values[("regproxy_reloads_total", (("result", "failed"),))] == 0  # there from start
    renewed = trustme.CA().issue_cert("localhost", not_after=datetime(2031, 5, 6, tzinfo=UTC))
    replace_file(served.directory / "server.crt", renewed.cert_chain_pems[0].bytes())
    replace_file(served.directory / "server.key", renewed.private_key_pem.bytes())

    async def renewed_everywhere() -> bool:
        values = samples((await scrape(port))[1])
        return values[expiry] == datetime(2031, 5, 6, tzinfo=UTC).timestamp()

    await until(renewed_everywhere, 20, "the metric never told the renewed certificate")


def test_reference_config_documents_every_key() -> None:
    from proxy.conf.config import _KEYS

    reference = (Path(__file__).resolve().parents[1] / "conf/regproxy.reference.yaml").read_text()
    for key in _KEYS:
        leaf = key.split(".")[-1]
        assert re.search(rf"^\s*#?\s*{re.escape(leaf)}:", reference, re.M), key


# A user name htpasswd accepts (no spaces, no ':') that tries every trick on a log reader.
HOSTILE_USER = 'ev"il\\\u202e\u0080]-[x'
HOSTILE_AGENT = b'agent" 200 5 "x\\" \xe2\x80\xa8\xc2\x85\xff\tend'
HOSTILE_REFERER = b'"-" "forged\\\xe2\x80\xae'
HOSTILE_PATH = b'/v2/\\a"b%ff]x/tags/list'


async def raw_request(served: Served, tls: TlsPair, data: bytes) -> bytes:
    port = int(served.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context(), server_hostname="localhost"
    )
    writer.write(data)
    answer = await reader.read()  # each request says Connection: close
    writer.close()
    return answer


async def hostile_requests(served: Served, tls: TlsPair) -> None:
    """A push by HOSTILE_USER with a hostile agent and referer, then an anonymous request
    with a hostile request line; returns once both are logged."""
    with (served.directory / "htpasswd").open("a") as htpasswd:
        htpasswd.write(htpasswd_text({HOSTILE_USER: "pw"}))
    (served.directory / "groups").write_text(f"pusher: push {HOSTILE_USER}\n")
    credentials = base64.b64encode(f"{HOSTILE_USER}:pw".encode()).decode()
    for _ in range(200):  # until the reload has taken the new user in
        async with served.session.get(
            served.url + "/v2/", headers={"Authorization": f"Basic {credentials}"}
        ) as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.05)
    push = (
        b"PUT /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: localhost\r\n"
        + f"Authorization: Basic {credentials}\r\n".encode()
        + b"User-Agent: " + HOSTILE_AGENT + b"\r\nReferer: " + HOSTILE_REFERER + b"\r\n"
        + b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )  # fmt: skip
    assert b" 200 " in (await raw_request(served, tls, push)).split(b"\r\n")[0]
    anonymous = (
        b"GET " + HOSTILE_PATH + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert b" 400 " in (await raw_request(served, tls, anonymous)).split(b"\r\n")[0]


def logged_lines(path: Path) -> list[str]:
    return path.read_text(encoding="ascii").splitlines() if path.exists() else []


async def wait_for_lines(path: Path, count: int) -> list[str]:
    for _ in range(200):
        if len(lines := logged_lines(path)) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} lines in {path}: {logged_lines(path)}")


@pytest.mark.parametrize(
    "served",
    [
        f"access_log:\n  format: {fmt}\n  path: access.log\n"
        for fmt in ("common", "combined", "combined_duration")
    ],
    indirect=True,
)
async def test_hostile_values_cannot_forge_access_or_audit_lines(
    served: Served, tls: TlsPair
) -> None:
    fmt = (served.directory / "regproxy.yaml").read_text().split("format: ")[1].split()[0]
    await hostile_requests(served, tls)
    lines = await wait_for_lines(served.directory / "access.log", 2)
    push, anonymous = (apache_log.parse(line) for line in lines[-2:])
    assert (push.user, push.status) == (HOSTILE_USER.encode(), 200)
    assert push.request == b"PUT /v2/team/app/manifests/v1 HTTP/1.1"
    assert (anonymous.user, anonymous.status) == (b"-", 400)
    assert anonymous.request == b"GET " + HOSTILE_PATH + b" HTTP/1.1"
    if fmt == "common":
        assert (push.referer, push.agent, push.duration) == (None, None, None)
    else:
        assert (push.referer, push.agent) == (HOSTILE_REFERER, HOSTILE_AGENT)
        assert (anonymous.referer, anonymous.agent) == (b"-", b"-")
        assert (push.duration is not None) is (fmt == "combined_duration")
    # The audit line (standard error here, with the diagnostics) is JSON in ASCII.
    served.process.send_signal(signal.SIGTERM)
    await served.process.wait()
    errors = (served.directory / "regproxy.err").read_text(encoding="ascii").splitlines()
    (audit,) = [line.split("regproxy.audit: ", 1)[1] for line in errors if "regproxy.audit" in line]
    record = json.loads(audit)
    assert (record["user"], record["repository"], record["reference"]) == (
        HOSTILE_USER,
        "team/app",
        "v1",
    )


@pytest.mark.parametrize(
    "served", ["access_log:\n  format: json\n  path: access.jsonl\n"], indirect=True
)
async def test_hostile_values_in_json_lines(served: Served, tls: TlsPair) -> None:
    await hostile_requests(served, tls)
    lines = await wait_for_lines(served.directory / "access.jsonl", 2)
    push, anonymous = (json.loads(line) for line in lines[-2:])
    assert (push["user"], push["path"]) == (HOSTILE_USER, "/v2/team/app/manifests/v1")
    assert push["user_agent"] == json_text(HOSTILE_AGENT.decode("utf-8", "surrogateescape"))
    assert push["user_agent"].encode("utf-8")  # strict Unicode: no lone surrogates
    assert (anonymous["path"], anonymous["status"]) == (HOSTILE_PATH.decode(), 400)
