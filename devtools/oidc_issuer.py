"""A local OIDC issuer for tests: discovery and JWKS over HTTPS on loopback (a trustme CA), keys
made in the test, and tokens signed with them, well or in every wrong way a test needs.

It runs its aiohttp server on an event loop of its own, in a thread, so the in-process proxy
(the test's loop) and subprocesses (serve, podman) reach it alike.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from devtools.net import free_socket

AUDIENCE = "https://registry.test"
Key = RSAKey | ECKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(kind: str, kid: str) -> Key:
    if kind == "EC":
        return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"})
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"})


def public_pem(key: Key) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Issuer:
    """`https://localhost:PORT` with `/.well-known/openid-configuration` and `/jwks`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = directory / "issuer-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.keys: list[Key] = [new_key("RSA", "rsa-1")]  # published in the JWKS
        self.requests: list[str] = []  # paths asked for
        self.failing = False  # answer 503 to everything
        self.padding: list[dict[str, Any]] = []  # more JWKS entries (unusable ones: size)
        self._sock = free_socket()
        self.port = self._sock.getsockname()[1]
        self.url = f"https://localhost:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # the server

    def start(self) -> Issuer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        await web.SockSite(self._runner, self._sock, ssl_context=context).start()

    def stop(self) -> None:
        """Stop answering: connections are refused from now on."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.failing:
            return web.Response(status=503)
        return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.failing:
            return web.Response(status=503)
        keys = [k.as_dict(private=False) for k in self.keys]
        return web.json_response({"keys": keys + self.padding})

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count("/jwks")

    # tokens

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """GitHub Actions-like claims, valid for five minutes from now."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "repo:acme/app:ref:refs/tags/v1.0",
            "repository": "acme/app",
            "repository_owner": "acme",
            "ref": "refs/tags/v1.0",
            "workflow": "release",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        claims: Mapping[str, Any] | None = None,
        key: Key | None = None,
        header: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A token signed with `key` (default: the first published key), its kid in the
        header; `overrides` change the default claims (None removes one)."""
        key = key or self.keys[0]
        alg = "ES256" if isinstance(key, ECKey) else "RS256"
        head = {"alg": alg, "typ": "JWT", "kid": key.kid, **(header or {})}
        body = dict(claims) if claims is not None else self.claims(**overrides)
        return jwt.encode(head, body, key, algorithms=[head["alg"]])

    def unsigned(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """`header.claims.` with no signature (what an `alg: none` token is)."""
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."

    def hmac_confused(self, key: Key, claims: Mapping[str, Any], alg: str = "HS256") -> str:
        """An HMAC with the issuer's *public* key (its PEM) as the secret: the forgery that
        works on verifiers that let the token choose the algorithm."""
        head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": key.kid}).encode())
        body = b64(json.dumps(claims).encode())
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        mac = hmac.new(public_pem(key), f"{head}.{body}".encode(), digest).digest()
        return f"{head}.{body}.{b64(mac)}"

    def config(self, section: str = "", **settings: str) -> str:
        """An `oidc:` section trusting this issuer (YAML): `section` adds lines to the section
        (`"  clock_skew: 0\n"`), `settings` add or replace (or, empty, drop) issuer keys,
        given as YAML text."""
        issuer = {
            "issuer": self.url,
            "audience": AUDIENCE,
            "ca_file": str(self.ca_file),
            "user": '"ci:{repository}"',
            "groups": '{repository_owner: "github:"}',
            **settings,
        }
        lines = "".join(f"      {k}: {v}\n" for k, v in issuer.items() if v)
        head = "oidc:\n  jwks_min_interval: 0.2\n" + section
        return head + "  issuers:\n    - " + lines.lstrip()
