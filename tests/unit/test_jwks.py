"""An issuer's published keys (proxy.authn.jwks): only public signing keys regproxy can use are
kept, and chosen by kid and algorithm."""

from __future__ import annotations

import warnings

from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, RSAKey

from proxy.authn.jwks import candidates, parse_jwks

RSA = RSAKey.generate_key(2048, parameters={"kid": "r1", "use": "sig"})
EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})


def test_parse_jwks_keeps_only_public_signing_keys_it_can_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc warns: that is the point
        small = RSAKey.generate_key(1024, parameters={"kid": "small"})
    document = {
        "keys": [
            RSA.as_dict(private=False),
            EC.as_dict(private=False),
            OctKey.generate_key(256, parameters={"kid": "hmac"}).as_dict(private=True),
            ECKey.generate_key("P-384", parameters={"kid": "p384"}).as_dict(private=False),
            small.as_dict(private=False),
            {**RSA.as_dict(private=False), "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
        ]
    }
    assert sorted(k.kid or "" for k in parse_jwks(document)) == ["e1", "r1"]
    assert parse_jwks({"keys": "x"}) == () and parse_jwks([]) == ()
    keys = parse_jwks(document)
    assert [k.kid for k in candidates(keys, "r1", "RS256")] == ["r1"]
    assert candidates(keys, "r1", "ES256") == []
    assert [k.kid for k in candidates(keys, None, "ES256")] == ["e1"]


def test_private_parts_of_a_published_key_are_dropped() -> None:
    (key,) = parse_jwks({"keys": [RSA.as_dict(private=True)]})
    assert not key.is_private
