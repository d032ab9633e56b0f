"""Workload tokens through the real request path (in-process proxy, recording fake upstream)
against a local OIDC issuer on loopback HTTPS: what is accepted, every way a token is refused,
key rotation, the issuer going away, and claims in ACL rules."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from devtools.oidc_issuer import AUDIENCE, Issuer, new_key
from proxy.authn.credentials import hash_password
from proxy.conf.config import load
from proxy.core.problems import ConfigError
from tests.conftest import (
    GROUPS_TEXT,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    basic,
    replace_file,
    until,
)
from tests.redis_server import RedisServer

ACL = """acl:
  - claims: {repository_owner: acme, ref: "refs/tags/v*"}
    repositories: ["apps/app", "apps/app-*"]
    actions: [pull, push]
  - groups: ["github:acme"]
    repositories: ["apps/**"]
    actions: [pull]
  - groups: [pusher]
    actions: "*"
"""


async def start(make_proxy: ProxyFactory, issuer: Issuer, section: str = "", **keys: str
                ) -> RunningProxy:  # fmt: skip
    return await make_proxy(issuer.config(section, **keys) + ACL)


def as_password(token: str, user: str = "oidc") -> dict[str, str]:
    return {"Authorization": basic(user, token)}


def as_bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status(proxy: RunningProxy, headers: dict[str, str], method: str = "GET",
                 path: str = "/v2/") -> tuple[int, str]:  # fmt: skip
    async with proxy.session.request(method, proxy.url + path, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_a_token_logs_in_as_the_basic_password_or_as_bearer(
    make_proxy: ProxyFactory, issuer: Issuer, upstream: FakeUpstream
) -> None:
    proxy = await start(make_proxy, issuer)
    token = issuer.token()
    for headers in (as_password(token), as_password(token, "anything"), as_bearer(token)):
        assert (await status(proxy, headers))[0] == 200
    # The identity: "ci:acme/app", group "github:acme", and its claims for the ACL.
    push = "/v2/apps/app/manifests/v1"
    assert (await status(proxy, as_bearer(token), "PUT", push))[0] == 200
    assert (await status(proxy, as_bearer(token), "PUT", "/v2/apps/other/manifests/v1"))[0] == 403
    assert (await status(proxy, as_bearer(token), "GET", "/v2/apps/other/manifests/v1"))[0] == 200
    assert (await status(proxy, as_bearer(token), "GET", "/v2/elsewhere/manifests/v1"))[0] == 403
    assert [r.path_qs for r in upstream.requests if r.method == "PUT"] == [push]
    assert issuer.jwks_fetches == 1  # every request after the first: the verified cache


async def test_a_branch_build_may_pull_but_not_push(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    proxy = await start(make_proxy, issuer)
    branch = issuer.token(ref="refs/heads/main", sub="repo:acme/app:ref:refs/heads/main")
    assert (await status(proxy, as_bearer(branch), "PUT", "/v2/apps/app/manifests/v1"))[0] == 403
    assert (await status(proxy, as_bearer(branch), "GET", "/v2/apps/app/manifests/v1"))[0] == 200


def reheaded(token: str, header: dict[str, object]) -> str:
    """The same payload and signature under another header."""
    _, payload, signature = token.split(".")
    head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{head}.{payload}.{signature}"


def ec_unpublished_twin(issuer: Issuer) -> ECKey:
    """An EC key published under the RSA key's kid would be a confusion; this one is not
    published at all: its signature can only be checked against the RSA key."""
    return new_key("EC", issuer.keys[0].kid or "")  # type: ignore[return-value]


def _refused_tokens(issuer: Issuer) -> dict[str, str]:
    """Every token that must be refused with 401, by what is wrong with it."""
    now = int(time.time())
    good = issuer.claims()
    key = issuer.keys[0]
    attacker = new_key("RSA", key.kid or "")  # the issuer's kid, someone else's key
    valid = issuer.token()
    head, _, signature = valid.split(".")
    widened = {**good, "repository_owner": "acme", "repository": "acme/secret"}
    tampered_payload = base64.urlsafe_b64encode(json.dumps(widened).encode()).rstrip(b"=")
    return {
        "expired": issuer.token(exp=now - 120, iat=now - 600, nbf=now - 600),
        "not yet valid": issuer.token(nbf=now + 600, iat=now),
        "issued in the future": issuer.token(iat=now + 600, nbf=None),
        "wrong audience": issuer.token(aud="https://other.registry"),
        "wrong issuer": issuer.token(iss="https://evil.example"),
        "no expiry": issuer.token(exp=None),
        "unknown kid": issuer.token(key=new_key("RSA", "not-published")),
        "re-signed": issuer.token(key=attacker, repository="acme/secret"),
        "tampered payload": f"{head}.{tampered_payload.decode()}.{signature}",
        "alg none": issuer.unsigned({"alg": "none", "typ": "JWT"}, good),
        "alg none with a signature": issuer.unsigned({"alg": "none"}, good) + signature,
        "alg None": issuer.unsigned({"alg": "None", "kid": key.kid}, good) + "x",
        "HS256 with the public key": issuer.hmac_confused(key, good, "HS256"),
        "HS512 with the public key": issuer.hmac_confused(key, good, "HS512"),
        "PS256 (not accepted)": reheaded(valid, {"alg": "PS256", "kid": key.kid}),
        "ES256 header on an RSA signature": reheaded(valid, {"alg": "ES256", "kid": key.kid}),
        "RS256 header on an EC signature": reheaded(
            issuer.token(key=ec_unpublished_twin(issuer)), {"alg": "RS256", "kid": key.kid}
        ),
        "critical extension": reheaded(valid, {"alg": "RS256", "kid": key.kid, "crit": ["b64"]}),
        "unmet requirement": issuer.token(repository_owner="someone-else"),
        "no claims for the user name": issuer.token(repository=None),
        "user name of a password user": issuer.token(repository="push"),
        "user name of a robot": issuer.token(repository="robot$ci:x"),
        "nested JSON header": nested_header(990) + ".e30.c2ln",
    }


def nested_header(depth: int) -> str:
    """A header nesting `depth` arrays: deeper than Python's JSON reader can recurse, and
    still inside the 4 KiB an Authorization header may have."""
    text = '{"alg": "RS256", "x": ' + "[" * depth + "]" * depth + "}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


# Why each of _refused_tokens is refused (the 401's message starts with it).
REASONS = {
    "ES256 header on an RSA signature": "token signed by a key the issuer does not publish",
    "HS256 with the public key": "token algorithm 'HS256' not accepted",
    "HS512 with the public key": "token algorithm 'HS512' not accepted",
    "PS256 (not accepted)": "token algorithm 'PS256' not accepted",
    "RS256 header on an EC signature": "token signature does not verify",
    "alg None": "token algorithm 'None' not accepted",
    "alg none": "token algorithm 'none' not accepted",
    "alg none with a signature": "token algorithm 'none' not accepted",
    "critical extension": "token header has critical extensions",
    "expired": "token expired",
    "issued in the future": "token issued in the future (iat)",
    "no claims for the user name": "token claims do not make a user name",
    "nested JSON header": "malformed token header",
    "no expiry": "token has no expiry (exp)",
    "not yet valid": "token not valid yet (nbf)",
    "re-signed": "token signature does not verify",
    "tampered payload": "token signature does not verify",
    "unknown kid": "token signed by a key the issuer does not publish",
    "unmet requirement": "token claim repository_owner does not meet the issuer's requirements",
    "user name of a password user": "token user name 'push' has no prefix like 'ci:'",
    "user name of a robot": "token user name 'robot$ci:x' is a robot's",
    "wrong audience": "token audience is not this registry",
    "wrong issuer": "token issuer not trusted",
}


async def test_every_bad_token_is_refused_with_401(
    make_proxy: ProxyFactory, issuer: Issuer, upstream: FakeUpstream
) -> None:
    oidc = issuer.config(
        "  clock_skew: 30\n", user="'{repository}'", required="{repository_owner: acme}"
    )
    proxy = await make_proxy(oidc + ACL + "throttle:\n  attempts: 1000\n")  # 46 failures
    good = issuer.token(repository="ci:acme/app")  # the template has no prefix of its own
    assert (await status(proxy, as_bearer(good)))[0] == 200  # keys are fetched
    refused = _refused_tokens(issuer)
    assert refused.keys() == REASONS.keys()
    for name, token in refused.items():
        for headers in (as_password(token), as_bearer(token)):
            code, body = await status(proxy, headers, "PUT", "/v2/apps/app/manifests/v1")
            assert code == 401, (name, body)
            assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
            assert json.loads(body)["errors"][0]["message"].startswith(REASONS[name]), name
    assert [r for r in upstream.requests if r.method == "PUT"] == []


async def test_the_refusal_says_why(make_proxy: ProxyFactory, issuer: Issuer) -> None:
    proxy = await start(make_proxy, issuer, "  clock_skew: 0\n")
    now = int(time.time())
    expired = issuer.token(exp=now - 1, iat=now - 60, nbf=now - 60)
    code, body = await status(proxy, as_bearer(expired))
    assert (code, json.loads(body)["errors"][0]["message"]) == (401, "token expired")
    code, body = await status(proxy, as_password(issuer.token(aud="x")))
    assert (code, json.loads(body)["errors"][0]["message"]) == (
        401,
        "token audience is not this registry",
    )


async def test_a_token_is_remembered_only_until_it_expires(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    proxy = await start(make_proxy, issuer, "  clock_skew: 0\n")
    expires = int(time.time()) + 4  # checked for real on the first request: some margin
    token = issuer.token(exp=expires)
    assert (await status(proxy, as_bearer(token)))[0] == 200
    while time.time() < expires:
        await asyncio.sleep(0.1)
    assert (await status(proxy, as_bearer(token)))[0] == 401


async def test_rotation_a_new_key_is_fetched_when_a_token_names_it(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    proxy = await start(make_proxy, issuer)
    assert (await status(proxy, as_bearer(issuer.token())))[0] == 200
    assert issuer.jwks_fetches == 1
    rotated = new_key("EC", "ec-2")  # the issuer rotates to an ES256 key
    issuer.keys = [rotated, *issuer.keys]
    await asyncio.sleep(0.25)  # jwks_min_interval: 0.2 in these tests
    assert (await status(proxy, as_bearer(issuer.token(key=rotated))))[0] == 200
    assert issuer.jwks_fetches == 2
    # Unknown kids do not make the proxy hammer the issuer: one fetch per interval at most.
    strangers = [issuer.token(key=new_key("RSA", f"x{n}")) for n in range(5)]
    answers = await asyncio.gather(*(status(proxy, as_bearer(t)) for t in strangers))
    assert [code for code, _ in answers] == [401] * 5
    assert issuer.jwks_fetches <= 3


async def test_issuer_down_cached_keys_keep_working(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    proxy = await start(make_proxy, issuer, "  jwks_refresh: 0.1\n")
    assert (await status(proxy, as_bearer(issuer.token())))[0] == 200
    issuer.stop()
    await asyncio.sleep(0.3)  # the keys are now due to be fetched again: the fetch fails
    for n in range(3):  # new tokens (not in the verified cache), same key
        token = issuer.token(workflow=f"run-{n}")
        assert (await status(proxy, as_bearer(token)))[0] == 200
    # A token naming a key the proxy never saw cannot be checked while the issuer is down.
    await asyncio.sleep(0.25)
    unknown = issuer.token(key=new_key("RSA", "new"))
    assert (await status(proxy, as_bearer(unknown)))[0] == 503


def _min_interval(issuer: Issuer, seconds: float, section: str = "") -> str:
    return issuer.config(section).replace("jwks_min_interval: 0.2", f"jwks_min_interval: {seconds}")


async def test_a_key_the_issuers_last_answer_did_not_publish_is_401_while_it_is_down(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    """Within jwks_min_interval of a fetch that succeeded the issuer is not asked again: a
    token naming a key its answer did not have is refused, down or not."""
    proxy = await make_proxy(_min_interval(issuer, 60) + ACL)
    assert (await status(proxy, as_bearer(issuer.token())))[0] == 200
    issuer.stop()
    code, body = await status(proxy, as_bearer(issuer.token(key=new_key("RSA", "never"))))
    assert (code, json.loads(body)["errors"][0]["message"]) == (
        401,
        "token signed by a key the issuer does not publish",
    )
    assert (await status(proxy, as_bearer(issuer.token(workflow="again"))))[0] == 200


async def test_a_key_unknown_while_the_issuer_could_not_be_reached_is_503(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    """The last fetch failed: a token naming a key not among the cached ones cannot be
    checked, also within jwks_min_interval of that fetch (no new fetch is tried)."""
    proxy = await make_proxy(_min_interval(issuer, 0.5, "  jwks_refresh: 0.1\n") + ACL)
    assert (await status(proxy, as_bearer(issuer.token())))[0] == 200
    issuer.stop()
    unknown = [issuer.token(key=new_key("EC", f"new-{n}")) for n in range(2)]

    async def unavailable() -> bool:  # once min_interval has passed: a fetch, which fails
        return (await status(proxy, as_bearer(unknown[0])))[0] == 503

    await until(unavailable)
    assert (await status(proxy, as_bearer(unknown[1])))[0] == 503  # no fetch: still 503
    assert (await status(proxy, as_bearer(issuer.token(workflow="cached key"))))[0] == 200


async def test_token_cache_and_key_document_limits_are_settings(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    """oidc.token_cache_ttl: a verified token is remembered that long at most (its key
    withdrawn, it is refused once forgotten); oidc.jwks_max_size: a larger key set is not
    used (503 while there is no other)."""
    proxy = await start(make_proxy, issuer, "  token_cache_ttl: 0.5\n  jwks_max_size: 4096\n")
    old = as_bearer(issuer.token())
    assert (await status(proxy, old))[0] == 200
    rotated = new_key("EC", "rotated")
    issuer.keys = [rotated]  # the old key withdrawn
    new = as_bearer(issuer.token(key=rotated))

    async def answers(headers: dict[str, str], code: int) -> bool:
        return (await status(proxy, headers))[0] == code

    await until(lambda: answers(new, 200))  # fetched again once jwks_min_interval allows
    await until(lambda: answers(old, 401))  # forgotten after 0.5 s, and its key is gone
    issuer.padding = [{"kty": "oct", "k": "A" * 5000}]  # the key set is now over 4096 bytes
    later = as_bearer(issuer.token(key=new_key("EC", "later")))
    await until(lambda: answers(later, 503))  # fetched (past min_interval): too large
    assert (await status(proxy, as_bearer(issuer.token(key=rotated, workflow="x"))))[0] == 200
    assert issuer.keys == [rotated]  # (the cached keys stay in use)


async def test_a_large_key_set_arriving_in_pieces_is_read_whole(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    """A key set of 600 KB (under the 1 MiB default) arrives in many pieces: it was cut at
    the first and its issuer's tokens got 503."""
    issuer.padding = [{"kty": "oct", "kid": f"pad-{n}", "k": "A" * 6000} for n in range(100)]
    proxy = await start(make_proxy, issuer)
    assert (await status(proxy, as_bearer(issuer.token())))[0] == 200


async def test_issuer_failing_with_no_keys_is_503_never_an_allow(
    make_proxy: ProxyFactory, issuer: Issuer, upstream: FakeUpstream
) -> None:
    issuer.failing = True
    proxy = await start(make_proxy, issuer)
    code, body = await status(proxy, as_bearer(issuer.token()), "PUT", "/v2/apps/app/manifests/v1")
    assert code == 503 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    issuer.stop()
    await asyncio.sleep(0.25)
    assert (await status(proxy, as_password(issuer.token())))[0] == 503
    assert upstream.requests == []
    # Password users are not affected.
    assert (await status(proxy, proxy.auth("push")))[0] == 200


async def test_bearer_without_oidc_is_no_credentials(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    code, _ = await status(proxy, as_bearer("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"))
    assert code == 401
    assert (await status(proxy, {"Authorization": "Bearer not a token"}))[0] == 401


async def test_a_malformed_bearer_header_is_400(make_proxy: ProxyFactory, issuer: Issuer) -> None:
    proxy = await start(make_proxy, issuer)
    assert (await status(proxy, {"Authorization": "Bearer a b"}))[0] == 400


async def test_tokens_only_with_the_configured_user_name(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    proxy = await start(make_proxy, issuer, "  basic_user: oidc\n")
    token = issuer.token()
    assert (await status(proxy, as_password(token, "oidc")))[0] == 200
    assert (await status(proxy, as_password(token, "push")))[0] == 401  # never to htpasswd
    assert (await status(proxy, proxy.auth("push")))[0] == 200


async def test_failed_tokens_feed_the_throttle(make_proxy: ProxyFactory, issuer: Issuer) -> None:
    proxy = await start(make_proxy, issuer)
    bad = issuer.token(aud="https://other")
    codes = [(await status(proxy, as_bearer(bad)))[0] for _ in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    # Each token is its own login: another job's valid token from the same runner still works,
    # as the Basic password or as Bearer.
    good = issuer.token()
    assert (await status(proxy, as_bearer(good)))[0] == 200
    assert (await status(proxy, as_password(good)))[0] == 200


def absurd_time_claims(issuer: Issuer) -> dict[str, str]:
    """Tokens of a configured issuer, for the right audience, whose time claims no float can
    hold or that are no number at all: signed by the issuer, or with any signature."""
    valid = issuer.token()
    head, _, signature = valid.split(".")
    huge = {**issuer.claims(), "exp": 10**400}
    return {
        "exp 10**400, any signature": f"{head}.{base64url(huge)}.{signature}",
        "exp 10**400": issuer.token(exp=10**400),
        "exp -10**400": issuer.token(exp=-(10**400)),
        "nbf 10**400": issuer.token(nbf=10**400),
        "iat 10**400": issuer.token(iat=10**400),
        "exp NaN": issuer.token(exp=float("nan")),
        "exp Infinity": issuer.token(exp=float("inf")),
        "exp true": issuer.token(exp=True),
        "exp text": issuer.token(exp="2099-01-01"),
    }


def base64url(claims: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


async def test_absurd_time_claims_are_401_and_counted_as_failed_logins(
    make_proxy: ProxyFactory, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """#23 finding 11: `exp: 10**400` was a 500 with an OverflowError traceback, before any
    signature check, and not counted by the throttle."""
    proxy = await start(make_proxy, issuer, "  clock_skew: 30\n")
    assert (await status(proxy, as_bearer(issuer.token())))[0] == 200  # keys are fetched
    for name, token in absurd_time_claims(issuer).items():
        code, body = await status(proxy, as_password(token, f"job-{len(name)}"))
        assert code == 401, (name, body)
        assert json.loads(body)["errors"][0]["message"].startswith("token claim "), name
    assert "Traceback" not in caplog.text and "OverflowError" not in caplog.text
    huge = absurd_time_claims(issuer)["exp 10**400, any signature"]
    codes = [(await status(proxy, as_bearer(huge)))[0] for _ in range(6)]
    assert codes == [401] * 5 + [429]  # counted like any failed login (as Bearer: apart)


async def test_groups_and_names_from_claims_reach_the_acl_and_the_logs(
    make_proxy: ProxyFactory, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start(make_proxy, issuer)
    # Not a release (no tag): the claims rule does not match; the group rule lets it pull.
    token = issuer.token(ref="refs/heads/dev", repository="acme/tool")
    assert (await status(proxy, as_bearer(token), "GET", "/v2/apps/x/manifests/v1"))[0] == 200
    assert (await status(proxy, as_bearer(token), "PUT", "/v2/apps/x/manifests/v1"))[0] == 403
    other_org = issuer.token(repository_owner="other", repository="other/app")
    assert (await status(proxy, as_bearer(other_org), "GET", "/v2/apps/x/manifests/v1"))[0] == 403
    release = as_bearer(issuer.token())
    with caplog.at_level("INFO", "regproxy.audit"):
        assert (await status(proxy, release, "PUT", "/v2/apps/app/manifests/2"))[0] == 200
    entry = json.loads(caplog.records[-1].getMessage())
    assert (entry["user"], entry["issuer"], entry["subject"]) == (
        "ci:acme/app",
        issuer.url,
        "repo:acme/app:ref:refs/tags/v1.0",
    )


async def test_keys_and_verified_tokens_outlive_a_reload(
    make_proxy: ProxyFactory, issuer: Issuer
) -> None:
    proxy = await start(make_proxy, issuer)
    token = issuer.token()
    assert (await status(proxy, as_bearer(token)))[0] == 200
    before = proxy.state.current
    replace_file(proxy.groups, GROUPS_TEXT + "extra: push\n")  # an unrelated edit
    while proxy.state.current is before:
        await asyncio.sleep(0.05)
    assert (await status(proxy, as_bearer(issuer.token(workflow="other"))))[0] == 200
    assert issuer.jwks_fetches == 1
    # Another audience is another verifier (the keys are the issuer's: still not fetched).
    replace_file(proxy.config, proxy.config.read_text().replace(AUDIENCE, "https://other"))
    while proxy.state.current.config.oidc.issuers[0].audiences != ("https://other",):  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    assert (await status(proxy, as_bearer(token)))[0] == 401  # verified for the old audience
    assert (await status(proxy, as_bearer(issuer.token(aud="https://other"))))[0] == 200
    assert issuer.jwks_fetches == 1


async def test_claims_hold_only_for_the_issuer_the_rule_names(
    make_proxy: ProxyFactory, issuer: Issuer, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A second trusted issuer, with no requirements, mints the claims of the first issuer's
    release workflow: the README's rule, bound to the first issuer, is not for its tokens."""
    other = Issuer(tmp_path / "other").start()
    try:
        second = other.config(user='"ghes:{repository}"', groups='{repository_owner: "ghes:"}')
        oidc = issuer.config() + second.partition("  issuers:\n")[2]
        acl = ACL.replace("  - claims:", f"  - issuer: {issuer.url}\n    claims:", 1)
        proxy = await make_proxy(oidc + acl)
        forged = other.token()  # the same claims as the first issuer's release token
        for method, path in (("POST", "/v2/apps/app/blobs/uploads/"), PUSH):
            assert (await status(proxy, as_bearer(forged), method, path))[0] == 403
        assert (await status(proxy, as_bearer(issuer.token()), *PUSH))[0] == 200
        assert [r.method for r in upstream.requests if r.method != "GET"] == ["PUT"]
    finally:
        other.close()


PUSH = ("PUT", "/v2/apps/app/manifests/v1")
TEAM_PUSH = ("PUT", "/v2/team/x/manifests/v1")  # only the group file's pushers may


async def test_two_issuers_and_a_claims_rule_without_one_is_a_problem(
    issuer: Issuer, tmp_path: Path
) -> None:
    second = issuer.config(user='"ghes:{repository}"', groups='{repository_owner: "ghes:"}')
    second = second.replace(issuer.url, "https://ghes.example")
    config = tmp_path / "regproxy.yaml"
    config.write_text(issuer.config() + second.partition("  issuers:\n")[2] + ACL)
    with pytest.raises(ConfigError) as caught:
        load(config)
    line = config.read_text().splitlines().index("  - claims: {repository_owner: acme,"
                                                  ' ref: "refs/tags/v*"}') + 1  # fmt: skip
    assert [str(p) for p in caught.value.problems] == [
        f"{config}:{line}: claims: name the issuer these claims are from (several are configured)"
    ]


async def test_a_token_never_takes_a_redis_users_name_or_groups(
    make_proxy: ProxyFactory, issuer: Issuer, tmp_path: Path
) -> None:
    """An issuer whose template has no prefix (`user: sub`): a token whose `sub` is a Redis
    user's name (who is also in the group file) is refused; the user is unaffected."""
    with RedisServer(tmp_path / "redis") as server:
        server.client().hset(
            "regproxy:user:rdcarol", mapping={"password": hash_password("carol-pw", cost=4)}
        )
        state = f"state:\n  backend: redis\n  url: {server.url}\nauth_backends: [htpasswd, redis]\n"
        oidc = issuer.config(user="sub", groups="")
        proxy = await make_proxy(oidc + state + ACL)
        replace_file(proxy.directory / "groups", GROUPS_TEXT + "pusher: rdcarol\n")
        carol = {"Authorization": basic("rdcarol", "carol-pw")}

        async def pushes() -> bool:
            return (await status(proxy, carol, *TEAM_PUSH))[0] == 200

        await until(pushes, what="rdcarol is a pusher")
        taken = issuer.token(sub="rdcarol")
        for headers in (as_bearer(taken), as_password(taken)):
            code, body = await status(proxy, headers, "GET", "/v2/rdcarol/private/manifests/v1")
            assert code == 401, body
            assert json.loads(body)["errors"][0]["message"].startswith(
                "token user name 'rdcarol' has no prefix like 'ci:'"
            )
        # A Kubernetes-like `sub` carries its own colons: accepted, with no group file groups.
        pod = issuer.token(sub="system:serviceaccount:ci:rdcarol")
        assert (await status(proxy, as_bearer(pod)))[0] == 200
        assert (await status(proxy, as_bearer(pod), *TEAM_PUSH))[0] == 403
