"""Workload tokens (JWTs, RFC 7519) read strictly, before and after their signature is checked.
Pure.

Accepted, and nothing else: a compact JWS of three base64url parts whose header and payload
are JSON objects without repeated names; RS256 or ES256; no `crit`; `iss` exactly the issuer,
an audience in `aud`, `exp` required, `nbf` and `iat` checked when present.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

# The only algorithms, each with the only key type it may be used with: `none` and HMAC are
# refused before any key is looked at, so a public key can never become an HMAC secret (the
# algorithm-confusion forgery); no key is ever taken from the token (`jwk`, `jku`, `x5c`).
ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}
_SEGMENT = r"[A-Za-z0-9_-]"
# A JWT's header is a JSON object, so its first part starts with "ey" ('{"'); an empty last
# part is still a token (`alg: none`), to be refused, not passed to a password backend.
_SHAPE = re.compile(rf"ey{_SEGMENT}*\.{_SEGMENT}*\.{_SEGMENT}*")
MAX_TOKEN = 8192


class Rejected(Exception):
    """The token is refused; the message says why (for the log and the 401's text)."""


@dataclass(frozen=True)
class Parsed:
    """A token split and decoded, not yet trusted."""

    text: str
    header: Mapping[str, Any]
    claims: Mapping[str, Any]

    @property
    def algorithm(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def looks_like_jwt(text: str) -> bool:
    """Whether a password (or Bearer credential) has a JWT's shape: cheap, no decoding."""
    return len(text) <= MAX_TOKEN and _SHAPE.fullmatch(text) is not None


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("repeated member name")
    return dict(pairs)


def _object(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeats)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a few hundred nested brackets fit in a header of 4 KiB
        raise Rejected(f"malformed token {what}") from None
    if not isinstance(value, dict):
        raise Rejected(f"malformed token {what}")
    return value


def parse(text: str) -> Parsed:
    """Split and decode; Rejected unless the header is one this module accepts at all."""
    if not looks_like_jwt(text) or text.count(".") != 2:
        raise Rejected("not a JWT")
    head, payload, signature = text.split(".")
    header = _object(head, "header")
    claims = _object(payload, "payload")
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise Rejected(f"token algorithm {algorithm!r} not accepted (only RS256, ES256)")
    if "crit" in header:
        raise Rejected("token header has critical extensions")
    if "kid" in header and not isinstance(header["kid"], str):
        raise Rejected("malformed token header")
    if not signature:
        raise Rejected("token has no signature")
    return Parsed(text, header, claims)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim as a finite float; Rejected for anything else (a bool, text, NaN, an
    infinity, or an integer too large for a float: `exp: 10**400`)."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(f"token claim {name} is not a number")
    try:
        number = float(value)  # an int beyond a float's range raises OverflowError
    except OverflowError:
        raise Rejected(f"token claim {name} is out of range") from None
    if not math.isfinite(number):
        raise Rejected(f"token claim {name} is not a number")
    return number


def check_claims(
    claims: Mapping[str, Any], issuer: str, audiences: Sequence[str], now: float, skew: float
) -> float:
    """Rejected unless iss, aud, exp, nbf and iat hold at `now` (epoch seconds); the token's
    `exp`."""
    if claims.get("iss") != issuer:
        raise Rejected("token issuer not trusted")
    aud = claims.get("aud")
    held = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a in audiences for a in held):
        raise Rejected("token audience is not this registry")
    expires = _number(claims, "exp")
    if expires is None:
        raise Rejected("token has no expiry (exp)")
    if now >= expires + skew:
        raise Rejected("token expired")
    not_before = _number(claims, "nbf")
    if not_before is not None and now < not_before - skew:
        raise Rejected("token not valid yet (nbf)")
    issued = _number(claims, "iat")
    if issued is not None and now < issued - skew:
        raise Rejected("token issued in the future (iat)")
    return expires


Key = RSAKey | ECKey


def key_fits(key: Key, algorithm: str) -> bool:
    """Whether `key` may verify `algorithm`: its type is the algorithm's, an EC key is on
    P-256, and a key that names an algorithm or a use names this one and signing."""
    if ALGORITHMS.get(algorithm) != key.key_type:
        return False
    if isinstance(key, ECKey) and key.curve_name != "P-256":
        return False
    named = key.get("alg")
    use = key.get("use")
    return (named is None or named == algorithm) and (use is None or use == "sig")


def verify_signature(token: Parsed, keys: Sequence[Key]) -> bool:
    """Whether one of `keys` (already chosen for the token's kid) signed it, with exactly the
    token's algorithm and a key of the type that algorithm is for."""
    algorithm = token.algorithm
    for key in keys:
        if not key_fits(key, algorithm):
            continue  # never: an RSA key with ES256, any key with an HMAC algorithm
        try:
            jws.deserialize_compact(token.text, key, algorithms=[algorithm])
        except (JoseError, ValueError):
            continue
        return True
    return False
