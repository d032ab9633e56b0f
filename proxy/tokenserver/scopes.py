"""Token server mode, like docker_auth: requested scopes (`repository:alice/app:pull,push`) ->
a JWT whose `access` holds the subset the ACL grants, signed with a key the registry trusts.

Scope parsing and claim building are pure; signing uses joserfc.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.problems import Problem
from ..http.routes import ACTIONS, Action, valid_name
from ..policy.grants import NONE_ACTIVE, Active, Grant
from ..policy.identity import Identity
from ..policy.rules import Rule, decide

if TYPE_CHECKING:  # cryptography and joserfc are imported only in token server mode
    from joserfc.jwk import ECKey, RSAKey

_SCOPE_RE = re.compile(r"(repository(?:\([a-z0-9]+\))?):([^:]+):([a-z*,]*)")
MAX_EXPIRY = 86_400
# Seconds past `exp` that the registry still takes a token: distribution's `Leeway` (for clock
# skew), which it adds to `exp` and takes from `nbf`.
REGISTRY_LEEWAY = 60


@dataclass(frozen=True)
class TokenSettings:
    """The `token:` section."""

    issuer: str
    service: str
    key: Path
    certificate: Path
    expiry: int = 300
    path: str = "/auth"
    catalog_groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """`scope` parameters (several scopes each, ASCII spaces apart); malformed ones and
    unknown resource types are dropped: a token never grants what it cannot name."""
    scopes = []
    for value in values:
        for text in filter(None, value.split(" ")):
            if text == "registry:catalog:*":
                scopes.append(Scope("registry", "catalog", ("*",)))
                continue
            match = _SCOPE_RE.fullmatch(text)
            if match and valid_name(match.group(2)):
                actions = tuple(a for a in match.group(3).split(",") if a)
                scopes.append(Scope(match.group(1), match.group(2), actions))
    return scopes


@dataclass(frozen=True)
class Access:
    """A scope as granted, and the break-glass grants that gave some of its actions."""

    scope: Scope
    grants: tuple[Grant, ...] = ()


def granted(
    rules: tuple[Rule, ...],
    who: Identity,
    scope: Scope,
    catalog_groups: frozenset[str],
    grants: Active = NONE_ACTIVE,
) -> Access | None:
    """The part of `scope` the ACL (or a grant in force) gives, or None."""
    if scope.type == "registry":
        return Access(scope) if who.groups & catalog_groups else None
    wanted: list[str] = []
    used: dict[str, Grant] = {}
    for action in scope.actions:
        needed: tuple[Action, ...] = ACTIONS if action == "*" else (action,)  # type: ignore[assignment]
        if action not in (*ACTIONS, "*"):
            continue
        decisions = [decide(rules, who, a, scope.name, grants=grants) for a in needed]
        if all(d.allowed for d in decisions):
            wanted.append(action)
            used |= {d.grant.id: d.grant for d in decisions if d.grant is not None}
    if not wanted:
        return None
    return Access(Scope(scope.type, scope.name, tuple(wanted)), tuple(used.values()))


def claims(
    settings: TokenSettings, who: Identity, access: list[Access], now: float
) -> dict[str, Any]:
    return {
        "iss": settings.issuer,
        "sub": who.user or "",
        "aud": settings.service,
        "exp": _expiry(settings, who, access, now),
        "nbf": int(now) - 1,
        "iat": int(now),
        "jti": secrets.token_urlsafe(16),
        "access": [
            {"type": a.scope.type, "name": a.scope.name, "actions": list(a.scope.actions)}
            for a in access
        ],
    }


def _expiry(settings: TokenSettings, who: Identity, access: list[Access], now: float) -> int:
    """`exp`: `expiry` from now, or sooner, so the token ends with the caller's credential or
    the first grant in it."""
    # The registry takes a token up to REGISTRY_LEEWAY seconds past its `exp`.
    ends = [int(g.expires) - REGISTRY_LEEWAY for a in access for g in a.grants]
    if who.expires is not None:
        ends.append(int(who.expires) - REGISTRY_LEEWAY)
    return min([int(now) + settings.expiry, *ends])


@dataclass(frozen=True)
class Signer:
    """A loaded key and certificate; sign() makes the compact JWT."""

    algorithm: str
    key: RSAKey | ECKey = field(repr=False)
    x5c: tuple[str, ...]

    def sign(self, payload: dict[str, Any]) -> str:
        from joserfc import jwt

        header = {"typ": "JWT", "alg": self.algorithm, "x5c": list(self.x5c)}
        return jwt.encode(header, payload, self.key, algorithms=[self.algorithm])


def load_signer(settings: TokenSettings) -> tuple[Signer | None, list[Problem]]:
    """Read key and certificate chain; RSA -> RS256, EC P-256 -> ES256; they must match."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from joserfc.jwk import ECKey, RSAKey

    try:
        pem_key = settings.key.read_bytes()
        pem_certs = settings.certificate.read_bytes()
    except OSError as exc:
        return None, [Problem(str(exc.filename), 0, f"token: cannot read: {exc.strerror}")]
    try:
        private = serialization.load_pem_private_key(pem_key, password=None)
        chain = x509.load_pem_x509_certificates(pem_certs)
    except ValueError as exc:
        return None, [Problem(str(settings.key), 0, f"token: not a PEM key and certificate: {exc}")]
    key: RSAKey | ECKey
    if isinstance(private, rsa.RSAPrivateKey):
        algorithm, key = "RS256", RSAKey.import_key(pem_key)
    elif isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
        algorithm, key = "ES256", ECKey.import_key(pem_key)
    else:
        return None, [Problem(str(settings.key), 0, "token: key must be RSA or EC P-256")]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(encoding, public) != private.public_key().public_bytes(
        encoding, public
    ):
        problem = "token: the certificate does not match the key"
        return None, [Problem(str(settings.certificate), 0, problem)]
    x5c = tuple(base64.b64encode(c.public_bytes(encoding)).decode() for c in chain)
    return Signer(algorithm, key, x5c), []


def issue(
    settings: TokenSettings,
    signer: Signer,
    rules: tuple[Rule, ...],
    who: Identity,
    scope_params: list[str],
    now: float | None = None,
    grants: Active = NONE_ACTIVE,
) -> tuple[dict[str, Any], list[Access]]:
    """The token endpoint's JSON answer for an authenticated (or anonymous) caller, and the
    access it holds."""
    moment = time.time() if now is None else now
    access = [
        g
        for s in parse_scopes(scope_params)
        if (g := granted(rules, who, s, settings.catalog_groups, grants)) is not None
    ]
    payload = claims(settings, who, access, moment)
    token = signer.sign(payload)
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
    # Until the registry stops taking it (a grant's end), counted in whole seconds, one at least.
    lasts = max(1, payload["exp"] + REGISTRY_LEEWAY - int(moment))
    answer = {
        "token": token,
        "access_token": token,
        "expires_in": min(settings.expiry, lasts),
        "issued_at": issued,
        "scope": " ".join(str(a.scope) for a in access),
    }
    return answer, access
