"""Workload tokens read strictly (proxy.authn.jwt), by tables: shapes, headers, claim times, key
choice, and the algorithm-confusion guards, without any network."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from proxy.authn.jwt import (
    Parsed,
    Rejected,
    check_claims,
    key_fits,
    looks_like_jwt,
    parse,
    verify_signature,
)

RSA = RSAKey.generate_key(2048, parameters={"kid": "r1", "use": "sig"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})
ISS, AUD, NOW = "https://issuer.test", "https://registry.test", 1_800_000_000


def part(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def raw(header: Any, claims: Any, signature: str = "c2ln") -> str:
    return f"{part(header)}.{part(claims)}.{signature}"


def nested(prefix: str, depth: int = 1500) -> str:
    """A JSON object, base64url, holding `depth` nested arrays."""
    text = prefix + "[" * depth + "]" * depth + "}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


NESTED_HEADER = nested('{"alg": "RS256", "x": ') + ".e30.c2ln"
NESTED_PAYLOAD = nested('{"aud": ')


@pytest.mark.parametrize(
    ("text", "shaped"),
    [
        (raw({"alg": "RS256"}, {}), True),
        (raw({"alg": "none"}, {}, ""), True),  # a token still: refused, not a password
        ("eyJhbGciOiJSUzI1NiJ9.e30", False),
        ("hunter2", False),
        ("ey.a.b.c", False),
        ("ey a.b.c", False),
        ("ab.cd.ef", False),
        ("ey" + "a" * 9000 + ".b.c", False),
    ],
)
def test_looks_like_jwt(text: str, shaped: bool) -> None:
    assert looks_like_jwt(text) is shaped


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (raw({"alg": "none"}, {}), "token algorithm 'none' not accepted"),
        (raw({"alg": "HS256"}, {}), "token algorithm 'HS256' not accepted"),
        (raw({"alg": "RS512"}, {}), "token algorithm 'RS512' not accepted"),
        (raw({"alg": ["RS256"]}, {}), "token algorithm \\['RS256'\\] not accepted"),
        (raw({"typ": "JWT"}, {}), "token algorithm None not accepted"),
        (raw({}, {}), "not a JWT"),  # "e30": no header of a JWT looks like that
        (raw({"alg": "RS256", "crit": []}, {}), "token header has critical extensions"),
        (raw({"alg": "RS256", "kid": 7}, {}), "malformed token header"),
        (raw({"alg": "RS256"}, {}, ""), "token has no signature"),
        (raw({"alg": "RS256"}, [1, 2]), "malformed token payload"),
        (raw(["alg"], {}), "not a JWT"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln.x", "not a JWT"),
        ("eyJhbGciOiJSUzI1NiIsImFsZyI6Im5vbmUifQ.e30.c2ln", "malformed token header"),  # repeated
        (part({"alg": "RS256"}) + "." + "eyJhIjoxLCJhIjoyfQ" + ".c2ln", "malformed token payload"),
        ("eyJub3QganNvbg.e30.c2ln", "malformed token header"),
        # JSON nested deeper than the interpreter's recursion limit: refused, never raised
        (NESTED_HEADER, "malformed token header"),
        (part({"alg": "RS256"}) + "." + NESTED_PAYLOAD + ".c2ln", "malformed token payload"),
    ],
)
def test_parse_refuses(token: str, reason: str) -> None:
    with pytest.raises(Rejected, match=f"^{reason}"):
        parse(token)


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "exp": NOW + 60, "nbf": NOW, "iat": NOW}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("values", "now", "reason"),
    [
        (claims(), NOW, None),
        (claims(aud=["other", AUD]), NOW, None),
        (claims(nbf=None, iat=None), NOW, None),
        (claims(exp=NOW - 10), NOW, None),  # within the 30 s skew
        (claims(exp=NOW - 30), NOW, "token expired"),
        (claims(nbf=NOW + 29), NOW, None),
        (claims(nbf=NOW + 31), NOW, "token not valid yet"),
        (claims(iat=NOW + 31), NOW, "token issued in the future"),
        (claims(exp=None), NOW, "token has no expiry"),
        (claims(exp="soon"), NOW, "token claim exp is not a number"),
        (claims(exp=True), NOW, "token claim exp is not a number"),
        (claims(iat=float("nan")), NOW, "token claim iat is not a number"),
        (claims(exp=float("inf")), NOW, "token claim exp is not a number"),
        (claims(exp=10**400), NOW, "token claim exp is out of range"),
        (claims(exp=-(10**400)), NOW, "token claim exp is out of range"),
        (claims(nbf=10**400), NOW, "token claim nbf is out of range"),
        (claims(iat=10**309), NOW, "token claim iat is out of range"),
        (claims(nbf=False), NOW, "token claim nbf is not a number"),
        (claims(exp=[NOW + 60]), NOW, "token claim exp is not a number"),
        (claims(exp=2**900), NOW, None),  # far away, but a float holds it exactly
        (claims(exp=1.5e300, iat=-1e300), NOW, None),
        (claims(iss=ISS + "/"), NOW, "token issuer not trusted"),
        (claims(iss=None), NOW, "token issuer not trusted"),
        (claims(aud="other"), NOW, "token audience is not this registry"),
        (claims(aud=None), NOW, "token audience is not this registry"),
        (claims(aud=[]), NOW, "token audience is not this registry"),
        (claims(aud=[[AUD]]), NOW, "token audience is not this registry"),
    ],
)
def test_check_claims(values: dict[str, Any], now: float, reason: str | None) -> None:
    if reason is None:
        assert check_claims(values, ISS, (AUD,), now, 30) == values["exp"]
    else:
        with pytest.raises(Rejected, match=f"^{reason}"):
            check_claims(values, ISS, (AUD,), now, 30)


@given(
    st.sampled_from(["exp", "nbf", "iat"]),
    st.one_of(
        st.integers(),
        st.floats(),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_any_time_claim_value_is_a_decision_never_a_crash(name: str, value: Any) -> None:
    """Whatever JSON puts in a time claim (huge integers, NaN, infinities, booleans), the
    token is accepted or Rejected: nothing else escapes."""
    with contextlib.suppress(Rejected):
        check_claims(claims(**{name: value}), ISS, (AUD,), NOW, 30)


def signed(key: RSAKey | ECKey, alg: str, **header: Any) -> Parsed:
    token = jwt.encode({"alg": alg, "kid": key.kid, **header}, claims(), key, algorithms=[alg])
    return parse(token)


def test_signatures_verify_only_with_the_key_type_of_their_algorithm() -> None:
    assert verify_signature(signed(RSA, "RS256"), [RSA])
    assert verify_signature(signed(EC, "ES256"), [EC])
    assert not verify_signature(signed(RSA, "RS256"), [EC])
    assert not verify_signature(signed(EC, "ES256"), [RSA])
    other = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    assert not verify_signature(signed(other, "RS256"), [RSA])


def test_a_public_key_is_never_an_hmac_secret() -> None:
    """The classic confusion: HS256 keyed with the RSA public key. The header is refused
    before any key is looked at, and no key is fit for an HMAC algorithm anyway."""
    pem = RSA.as_pem(private=False)
    head, body = part({"alg": "HS256", "kid": "r1"}), part(claims())
    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(Rejected, match="not accepted"):
        parse(forged)
    assert not any(key_fits(k, "HS256") for k in (RSA, EC))


@pytest.mark.parametrize(
    ("key", "alg", "fits"),
    [
        (RSA, "RS256", True),
        (RSA, "ES256", False),
        (EC, "ES256", True),
        (EC, "RS256", False),
        (ECKey.generate_key("P-384"), "ES256", False),
        (RSAKey.generate_key(2048, parameters={"alg": "RS512"}), "RS256", False),
        (RSAKey.generate_key(2048, parameters={"use": "enc"}), "RS256", False),
        (RSA, "none", False),
    ],
)
def test_key_fits(key: RSAKey | ECKey, alg: str, fits: bool) -> None:
    assert key_fits(key, alg) is fits


@given(st.text(max_size=200))
def test_parse_never_raises_anything_but_rejected(text: str) -> None:
    with contextlib.suppress(Rejected):
        parse(text)


@given(st.dictionaries(st.text(max_size=5), st.none() | st.integers() | st.text(max_size=5)))
def test_arbitrary_headers_are_parsed_or_rejected(header: dict[str, Any]) -> None:
    try:
        parsed = parse(raw(header, {}))
    except Rejected:
        return
    assert parsed.algorithm in ("RS256", "ES256")
