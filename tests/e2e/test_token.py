"""Token server mode end to end: a real docker-registry with `auth: token` whose realm is
regproxy, and podman logging in, pushing and pulling through it with the same ACL."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

from devtools.net import free_port
from devtools.registry import Registry
from devtools.tls import TlsFiles, https_status
from tests.e2e.conftest import USERS, RegproxyProcess, start_regproxy
from tests.e2e.harness import Podman

SERVICE = "registry.test"
ACL = """acl:
  - users: [testuser]
    repositories: ["${user}/**"]
    actions: [pull, push]
  - groups: [pusher]
    actions: "*"
  - actions: [pull]
"""


def token_pair(directory: Path) -> tuple[Path, Path]:
    """An ES256 signing key and its self-signed certificate (the registry's trust root)."""
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "token.key", directory / "token.crt"
    ca.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cert))
    return key, cert


@contextlib.contextmanager
def token_registry(
    directory: Path, tls: TlsFiles, extra: str, expiry: int = 60
) -> Iterator[tuple[RegproxyProcess, Registry, Path]]:
    """regproxy as the token server (with `extra` config) of a registry with `auth: token`."""
    key, cert = token_pair(directory / "token")
    port = free_port()
    realm = f"https://localhost:{port}/auth"
    token = (
        f"token:\n  issuer: regproxy-test\n  service: {SERVICE}\n"
        f"  key: {key}\n  certificate: {cert}\n  expiry: {expiry}\n"
    )
    proxy = start_regproxy(directory / "proxy", "http://127.0.0.1:9", tls, token + extra, port=port)
    registry = Registry(
        directory / "registry",
        tls=tls,
        token={"realm": realm, "service": SERVICE, "issuer": "regproxy-test",
               "rootcertbundle": str(cert)},
    )  # fmt: skip
    try:
        yield proxy, registry, key
    finally:
        registry.stop()
        proxy.stop()


@pytest.fixture
def token_setup(tmp_path: Path, tls: TlsFiles) -> Iterator[tuple[RegproxyProcess, Registry, Path]]:
    with token_registry(tmp_path, tls, ACL) as running:
        yield running


def fetch_token(proxy: RegproxyProcess, tls: TlsFiles, user: str, scope: str) -> dict[str, object]:
    query = f"service={SERVICE}&scope={scope}"
    request = urllib.request.Request(f"https://{proxy.hostport}/auth?{query}")
    creds = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    request.add_header("Authorization", f"Basic {creds}")
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return dict(json.load(response))


def registry_status(registry: Registry, tls: TlsFiles, path: str, token: str) -> int:
    return https_status(registry.url + path, f"Bearer {token}", tls.ca_cert, 10)


def test_podman_through_a_token_registry(
    token_setup: tuple[RegproxyProcess, Registry, Path],
    tls: TlsFiles,
    podman: Podman,
    podman2: Podman,
) -> None:
    proxy, registry, _ = token_setup
    host = f"localhost:{registry.port}"
    podman.build_small_image("localhost/t:1")
    # The pusher may push anywhere; the namespaced user only under testuser/.
    assert podman.login(host, "testuserpush", USERS["testuserpush"], tls.cert_dir).returncode == 0
    pushed = podman.push("localhost/t:1", f"{host}/team/app:1", tls.cert_dir)
    assert pushed.returncode == 0, pushed.stderr
    owner = f"testuser:{USERS['testuser']}"
    own = podman.push("localhost/t:1", f"{host}/testuser/app:1", tls.cert_dir, creds=owner)
    assert own.returncode == 0, own.stderr
    other = podman.push("localhost/t:1", f"{host}/team/app:2", tls.cert_dir, creds=owner)
    assert other.returncode != 0
    # The pull-only user pulls, cannot push.
    reader = f"reader:{USERS['reader']}"
    assert podman2.pull(f"{host}/team/app:1", tls.cert_dir, creds=reader).returncode == 0
    refused = podman2.push("localhost/t:1", f"{host}/team/app:3", tls.cert_dir, creds=reader)
    assert refused.returncode != 0
    wrong = podman2.login(host, "reader", "wrong", tls.cert_dir)
    assert wrong.returncode != 0
    tags = registry.root / "docker/registry/v2/repositories/{}/_manifests/tags"
    assert sorted(p.name for p in Path(str(tags).format("team/app")).iterdir()) == ["1"]
    assert [p.name for p in Path(str(tags).format("testuser/app")).iterdir()] == ["1"]
    assert "token for testuserpush" in proxy.log()


def test_scopes_are_trimmed_to_what_the_acl_grants(
    token_setup: tuple[RegproxyProcess, Registry, Path], tls: TlsFiles
) -> None:
    proxy, _, _ = token_setup
    answer = fetch_token(
        proxy,
        tls,
        "testuser",
        "repository:testuser/app:pull,push&scope=repository:team/app:push,pull",
    )
    registry = JWSRegistry()
    registry.max_header_length = 8192  # the x5c certificate makes the header long
    claims = jwt.decode(str(answer["token"]), _public_key(answer), registry=registry).claims
    assert claims["access"] == [
        {"type": "repository", "name": "testuser/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
    ]
    assert claims["aud"] == SERVICE and claims["iss"] == "regproxy-test"
    assert claims["sub"] == "testuser" and claims["exp"] - claims["iat"] == 60


def _public_key(answer: dict[str, object]) -> ECKey:
    from cryptography import x509

    header = json.loads(base64.urlsafe_b64decode(str(answer["token"]).split(".")[0] + "=="))
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return ECKey.import_key(public)  # type: ignore[arg-type]


def test_registry_refuses_expired_and_forged_tokens(
    token_setup: tuple[RegproxyProcess, Registry, Path], tls: TlsFiles
) -> None:
    proxy, registry, key = token_setup
    answer = fetch_token(proxy, tls, "testuserpush", "repository:team/app:pull")
    good = str(answer["token"])
    assert registry_status(registry, tls, "/v2/team/app/tags/list", good) in (200, 404)
    header_b64, payload_b64, _ = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    # Forged: same header (x5c of the trusted cert), signed with another key.
    forged = jwt.encode(header, claims, ECKey.generate_key("P-256"), algorithms=["ES256"])
    assert registry_status(registry, tls, "/v2/team/app/tags/list", forged) == 401
    # Expired: signed with the real key, but an hour old.
    real = ECKey.import_key(key.read_bytes())
    old = {**claims, "iat": int(time.time()) - 3600, "nbf": int(time.time()) - 3600,
           "exp": int(time.time()) - 1800}  # fmt: skip
    expired = jwt.encode(header, old, real, algorithms=["ES256"])
    assert registry_status(registry, tls, "/v2/team/app/tags/list", expired) == 401
    # Widened: a token for team/app does not open other repositories.
    assert registry_status(registry, tls, "/v2/other/app/tags/list", good) == 401
