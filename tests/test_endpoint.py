"""The token endpoint in-process: GET and the OAuth2 password grant, scopes trimmed by the
ACL, errors as the spec wants them; and `regproxy check` of the token section. (Scopes and
grants as pure functions: tests/unit/test_scopes.py.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import trustme

from proxy.conf.config import load
from proxy.core.problems import ConfigError
from tests.conftest import USERS, ProxyFactory, basic


def pair(directory: Path, key_type: trustme.KeyType) -> tuple[Path, Path]:
    ca = trustme.CA(key_type=key_type)
    key, cert = directory / f"{key_type.name}.key", directory / f"{key_type.name}.crt"
    ca.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cert))
    return key, cert


def token_yaml(key: Path, cert: Path) -> str:
    return (
        f"token:\n  issuer: test-issuer\n  service: reg.test\n  key: {key}\n"
        f"  certificate: {cert}\n  catalog_groups: [pusher]\n"
    )


def claims_of(token: str) -> dict[str, object]:
    header, payload, _ = token.split(".")
    alg = json.loads(base64.urlsafe_b64decode(header + "=="))["alg"]
    return {"alg": alg, **json.loads(base64.urlsafe_b64decode(payload + "=="))}


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
async def test_get_and_password_grant(
    make_proxy: ProxyFactory, tmp_path: Path, key_type: trustme.KeyType
) -> None:
    proxy = await make_proxy(token_yaml(*pair(tmp_path, key_type)))
    scope = "scope=repository:a/b:pull,push&scope=registry:catalog:*"
    async with proxy.session.get(
        proxy.url + f"/auth?service=reg.test&{scope}&account=pull", headers=proxy.auth("pull")
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()
    claims = claims_of(answer["token"])
    assert claims["alg"] == ("ES256" if key_type is trustme.KeyType.ECDSA else "RS256")
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]}]
    assert answer["access_token"] == answer["token"] and answer["expires_in"] == 300
    form = {
        "grant_type": "password",
        "username": "push",
        "password": USERS["push"],
        "service": "reg.test",
        "scope": "repository:a/b:pull,push,delete registry:catalog:*",
        "client_id": "podman",
    }
    async with proxy.session.post(proxy.url + "/auth", data=form) as resp:
        assert resp.status == 200
        access = claims_of((await resp.json())["access_token"])["access"]
    assert access == [
        {"type": "repository", "name": "a/b", "actions": ["pull", "push", "delete"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]


@pytest.mark.parametrize(
    ("method", "path", "data", "headers", "status", "error"),
    [
        ("GET", "/auth?service=other", None, "pull", 400, "invalid_request"),
        ("GET", "/auth?service=reg.test&account=push", None, "pull", 400, "invalid_request"),
        ("GET", "/auth?service=reg.test", None, "wrong", 401, None),
        ("POST", "/auth", {"grant_type": "refresh_token", "refresh_token": "x",
                           "service": "reg.test"}, None, 400, "unsupported_grant_type"),
        ("POST", "/auth", {"grant_type": "password", "username": "pull", "password": "no",
                           "service": "reg.test"}, None, 401, None),
        ("DELETE", "/auth", None, "pull", 405, "invalid_request"),
    ],
)  # fmt: skip
async def test_token_errors(
    make_proxy: ProxyFactory,
    tmp_path: Path,
    method: str,
    path: str,
    data: dict[str, str] | None,
    headers: str | None,
    status: int,
    error: str | None,
) -> None:
    proxy = await make_proxy(token_yaml(*pair(tmp_path, trustme.KeyType.ECDSA)))
    auth = {"Authorization": basic("pull", "bad")} if headers == "wrong" else {}
    if headers == "pull":
        auth = proxy.auth("pull")
    async with proxy.session.request(method, proxy.url + path, data=data, headers=auth) as resp:
        assert resp.status == status
        body = await resp.json()
    if error:
        assert body["error"] == error
    else:
        assert body["errors"][0]["code"] == "UNAUTHORIZED"


def test_check_validates_the_token_section(tmp_path: Path) -> None:
    key, cert = pair(tmp_path, trustme.KeyType.ECDSA)
    other_key, _ = pair(tmp_path / "..", trustme.KeyType.RSA)
    config = tmp_path / "regproxy.yaml"
    config.write_text("token:\n  issuer: i\n  key: k.pem\n  expiry: 999999\n  path: /v2/auth\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    text = str(caught.value)
    assert f"{config}:4: token.expiry: at most 86400 seconds" in text
    assert f"{config}:5: token.path: must not be under /v2" in text
    from proxy.conf.snapshot import load_snapshot

    config.write_text(token_yaml(other_key, cert))
    (tmp_path / "htpasswd").write_text("u:$apr1$abcdefgh$0123456789012345678901\n")
    config.write_text(config.read_text() + f"htpasswd: {tmp_path / 'htpasswd'}\ngroups: null\n")
    with pytest.raises(ConfigError, match="the certificate does not match the key"):
        load_snapshot(config, {})
    config.write_text(token_yaml(key, cert).replace("  service: reg.test\n", ""))
    with pytest.raises(ConfigError, match="token: missing service"):
        load(config)


async def test_malformed_token_form_is_a_400(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await make_proxy(token_yaml(*pair(tmp_path, trustme.KeyType.ECDSA)))
    async with proxy.session.post(
        proxy.url + "/auth", data=b"--x", headers={"Content-Type": "multipart/form-data"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
