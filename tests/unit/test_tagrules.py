"""Unit tables and properties for tag policy: tag globs in ACL rules (proxy.policy.rules),
immutable tags and protected deletes (proxy.policy.tagrules), and glob containment
(proxy.policy.acl.glob_covers)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.routes import TAG_RE, Operation, Refusal, classify, valid_component
from proxy.policy.acl import glob_covers
from proxy.policy.identity import Identity
from proxy.policy.rules import Rule, authorize, decide, glob_regex
from proxy.policy.tagrules import Denied, Overwrite, Pointers, TagRule, plan

PULL = frozenset({"pull"})
PUSH = frozenset({"pull", "push"})
DIGEST = "sha256:" + "a" * 64

CI = Identity("robot", frozenset({"ci"}))
RELEASE = Identity("rel", frozenset({"release"}))
ALICE = Identity("alice")

CI_SHA = Rule(PUSH, groups=frozenset({"ci"}), repositories=("apps/**",), tags=("sha-*",),
              origin="ci-sha")  # fmt: skip
RELEASE_V = Rule(PUSH, groups=frozenset({"release"}), repositories=("apps/**",), tags=("v*",),
                 origin="release-v")  # fmt: skip
OTHER_TAGS = Rule(PULL, repositories=("apps/**",), tags=("*",), origin="other-tags")
PIPELINES = Rule(PUSH, groups=frozenset({"ci", "release"}), repositories=("apps/**",),
                 origin="pipelines")  # fmt: skip
OWN_TAGS = Rule(PUSH, repositories=("shared/*",), tags=("${user}-*",), origin="own-tags")
GROUP_TAGS = Rule(PUSH, repositories=("shared/*",), tags=("${group}-?",), origin="group-tags")
RULES = (CI_SHA, RELEASE_V, OTHER_TAGS, PIPELINES, OWN_TAGS, GROUP_TAGS)


@pytest.mark.parametrize(
    ("who", "action", "repository", "tag", "allowed", "origin"),
    [
        pytest.param(CI, "push", "apps/web", "sha-1f2e", True, "ci-sha", id="ci-sha-push"),
        pytest.param(CI, "push", "apps/web", "v1.0", False, "other-tags", id="ci-v-push"),
        pytest.param(CI, "pull", "apps/web", "v1.0", True, "other-tags", id="ci-v-pull"),
        pytest.param(CI, "push", "apps/web", None, True, "pipelines", id="ci-by-digest"),
        pytest.param(RELEASE, "push", "apps/web", "v1.0", True, "release-v", id="release-v"),
        pytest.param(RELEASE, "push", "apps/web", "sha-1", False, "other-tags", id="release-sha"),
        pytest.param(RELEASE, "push", "apps/web", "V1", False, "other-tags", id="case-sensitive"),
        pytest.param(ALICE, "push", "apps/web", None, False, None, id="alice-by-digest"),
        pytest.param(ALICE, "pull", "apps/web", "latest", True, "other-tags", id="alice-tag"),
        pytest.param(ALICE, "pull", "apps/web", None, False, None, id="alice-blob"),
        pytest.param(CI, "push", "tools/x", "sha-1", False, None, id="other-repository"),
        pytest.param(ALICE, "push", "shared/x", "alice-1", True, "own-tags", id="own-tag"),
        pytest.param(ALICE, "push", "shared/x", "bob-1", False, None, id="not-own-tag"),
        pytest.param(Identity("a*"), "push", "shared/x", "a-1", False, None, id="user-glob"),
        pytest.param(CI, "push", "shared/x", "ci-7", True, "group-tags", id="group-tag"),
        pytest.param(CI, "push", "shared/x", "ci-77", False, None, id="group-tag-one-char"),
        pytest.param(Identity(None), "pull", "apps/web", "v1", False, None, id="anonymous"),
    ],
)
def test_tag_rules_decide_only_requests_by_tag(
    who: Identity, action: str, repository: str, tag: str | None, allowed: bool, origin: str | None
) -> None:
    decision = decide(RULES, who, action, repository, tag)  # type: ignore[arg-type]
    assert decision.allowed is allowed
    assert (decision.rule.origin if decision.rule else None) == origin


def op(method: str, path: str, query: str = "") -> Operation:
    result = classify(method, path, query)
    assert isinstance(result, Operation), result
    return result


@pytest.mark.parametrize(
    ("method", "path", "tag"),
    [
        ("PUT", "/v2/apps/web/manifests/v1", "v1"),
        ("GET", "/v2/apps/web/manifests/Latest_1.x-y", "Latest_1.x-y"),
        ("DELETE", "/v2/apps/web/manifests/v1", "v1"),
        ("PUT", f"/v2/apps/web/manifests/{DIGEST}", None),
        ("HEAD", f"/v2/apps/web/blobs/{DIGEST}", None),
        ("GET", "/v2/apps/web/tags/list", None),
        ("POST", "/v2/apps/web/blobs/uploads/", None),
        ("GET", f"/v2/apps/web/referrers/{DIGEST}", None),
    ],
)
def test_operation_tag(method: str, path: str, tag: str | None) -> None:
    assert op(method, path).tag == tag


@pytest.mark.parametrize(
    ("method", "path", "tag"),
    [
        ("PUT", "/v2/apps/web/manifests/sha-1", "sha-1"),
        ("PUT", "/v2/apps/web/manifests/v1", "v1"),
        ("PUT", f"/v2/apps/web/manifests/{DIGEST}", None),
        ("PATCH", "/v2/apps/web/blobs/uploads/abc", None),
    ],
)
def test_authorize_passes_the_tag(method: str, path: str, tag: str | None) -> None:
    verdict = authorize(RULES, CI, op(method, path))
    expected = decide(RULES, CI, "push", "apps/web", tag)
    assert verdict.decision == expected


@pytest.mark.parametrize(
    "query", ["tag=v1", "tag=v1&tag=v2", "t%61g=v1", "x=1&tag=", "tag", "tag=v1;x=1"], ids=str
)
def test_manifest_put_with_tag_parameters_is_refused(query: str) -> None:
    refused = classify("PUT", f"/v2/apps/web/manifests/{DIGEST}", query)
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.code) == (400, "UNSUPPORTED")


def test_tag_parameters_elsewhere_are_left_alone() -> None:
    assert isinstance(classify("GET", "/v2/apps/web/manifests/v1", "tag=x"), Operation)
    assert isinstance(classify("PUT", f"/v2/apps/web/manifests/{DIGEST}", "tags=x"), Operation)


# --------------------------------------------------------------------------------------------
# Immutable tags and protected deletes
# --------------------------------------------------------------------------------------------

IMMUTABLE = TagRule("immutable", ("apps/**",), ("v*",), origin="/etc/regproxy/acl/r.yaml:30")
NEVER = TagRule("protected", ("base/**",), origin="/etc/regproxy/acl/r.yaml:34")
LATEST = TagRule("protected", ("apps/**",), ("latest",), origin="acl.yaml:40")
BY_DIGEST = TagRule("protected", ("scratch/**",), allow_by_digest=True, origin="acl.yaml:41",
                    description="delete by digest")  # fmt: skip
GUARDS = (IMMUTABLE, NEVER, LATEST, BY_DIGEST)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("PUT", "/v2/apps/web/manifests/v1.2", Overwrite("apps/web", "v1.2", IMMUTABLE)),
        ("PUT", "/v2/apps/web/manifests/sha-1", None),
        ("PUT", "/v2/apps/web/manifests/latest", None),  # protected from deletes only
        ("PUT", f"/v2/apps/web/manifests/{DIGEST}", None),
        ("PUT", "/v2/other/web/manifests/v1", None),
        ("GET", "/v2/apps/web/manifests/v1", None),
        ("DELETE", "/v2/apps/web/manifests/v1", "tag v1 is immutable (rule r.yaml:30)"),
        ("DELETE", "/v2/apps/web/manifests/latest", "deleting tag latest of apps/web"),
        ("DELETE", "/v2/apps/web/manifests/sha-1", None),
        ("DELETE", f"/v2/apps/web/manifests/{DIGEST}",
         Pointers("apps/web", DIGEST, (IMMUTABLE, LATEST))),
        ("DELETE", f"/v2/apps/web/blobs/{DIGEST}", "blobs of apps/web are never deleted"),
        ("DELETE", "/v2/base/os/manifests/x", "deleting tag x of base/os is refused"),
        ("DELETE", f"/v2/base/os/manifests/{DIGEST}", "manifests of base/os are never deleted"),
        ("DELETE", f"/v2/base/os/blobs/{DIGEST}", "blobs of base/os are never deleted"),
        ("DELETE", "/v2/scratch/a/manifests/x",
         'refused (rule acl.yaml:41 "delete by digest"): delete by digest'),
        ("DELETE", f"/v2/scratch/a/manifests/{DIGEST}", None),
        ("DELETE", f"/v2/scratch/a/blobs/{DIGEST}", None),
        ("DELETE", "/v2/other/a/manifests/x", None),
        ("DELETE", "/v2/apps/web/blobs/uploads/abc", None),  # cancelling an upload is a push
        ("POST", "/v2/base/os/blobs/uploads/", None),
    ],
)  # fmt: skip
def test_plan(method: str, path: str, expected: object) -> None:
    result = plan(GUARDS, op(method, path))
    if isinstance(expected, str):
        assert isinstance(result, Denied)
        assert expected in result.message
    else:
        assert result == expected


def test_no_guards_no_plan() -> None:
    assert plan((), op("DELETE", "/v2/apps/web/manifests/v1")) is None


def test_labels_name_the_file_not_its_directory() -> None:
    assert IMMUTABLE.label == "r.yaml:30"
    assert BY_DIGEST.label == 'acl.yaml:41 "delete by digest"'
    assert TagRule("immutable").label == "built-in"


def test_pointers_name_the_guarding_rule() -> None:
    pointers = Pointers("apps/web", DIGEST, (IMMUTABLE, LATEST))
    assert pointers.guarding("v2") == IMMUTABLE
    assert pointers.guarding("latest") == LATEST
    assert pointers.guarding("sha-1") is None


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_TAGS = st.from_regex(TAG_RE, fullmatch=True)
_TAG_GLOBS = st.text(alphabet="vV1.-_*?x", min_size=1, max_size=8)
_NAMES = st.sampled_from(["apps/web", "apps/a/b", "base/os", "x"])


@given(glob=_TAG_GLOBS, repository=_NAMES, digest_hex=st.text("0123456789abcdef", min_size=64,
       max_size=64), method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]))  # fmt: skip
def test_rules_with_tags_never_decide_requests_without_one(
    glob: str, repository: str, digest_hex: str, method: str
) -> None:
    """Putting a tag rule first changes nothing for requests by digest and for blobs."""
    first = Rule(frozenset({"pull", "push", "delete"}), tags=(glob,), origin="tags")
    for kind in ("manifests", "blobs"):
        operation = classify(method, f"/v2/{repository}/{kind}/sha256:{digest_hex}")
        if not isinstance(operation, Operation):
            continue
        for who in (CI, RELEASE, ALICE):
            assert authorize((first, *RULES), who, operation) == authorize(RULES, who, operation)


@given(glob=_TAG_GLOBS, tag=_TAGS)
def test_a_tag_rule_decides_exactly_the_tags_its_glob_matches(glob: str, tag: str) -> None:
    rule = Rule(frozenset({"push"}), tags=(glob,), origin="tags")
    decision = decide((rule,), ALICE, "push", "apps/web", tag)
    assert decision.allowed is bool(glob_regex(glob).fullmatch(tag))


@given(user=st.one_of(st.text(min_size=1, max_size=6), _TAGS), tag=_TAGS)
def test_user_placeholders_in_tags_are_literal(user: str, tag: str) -> None:
    """`${user}` is the user's name, never a wildcard, and only a name that is one repository
    path component (as everywhere else) fills it."""
    rule = Rule(frozenset({"push"}), tags=("${user}",), origin="own")
    allowed = decide((rule,), Identity(user), "push", "apps/web", tag).allowed
    assert allowed is (tag == user and valid_component(user))


@given(repository=_NAMES, tag=_TAGS, digest_hex=st.text("0123456789abcdef", min_size=64,
       max_size=64))  # fmt: skip
def test_what_an_immutable_tag_names_is_never_deleted_unasked(
    repository: str, tag: str, digest_hex: str
) -> None:
    """A delete of an immutable tag is refused; a delete by digest where tags are immutable
    is checked against the registry; a blob delete there is refused."""
    rule = TagRule("immutable", tags=("*",), origin="acl.yaml:1")
    by_tag = plan((rule,), op("DELETE", f"/v2/{repository}/manifests/{tag}"))
    assert isinstance(by_tag, Denied) and by_tag.rule == rule
    digest = f"sha256:{digest_hex}"
    by_digest = plan((rule,), op("DELETE", f"/v2/{repository}/manifests/{digest}"))
    assert by_digest == Pointers(repository, digest, (rule,))
    assert isinstance(plan((rule,), op("DELETE", f"/v2/{repository}/blobs/{digest}")), Denied)
    pushed = plan((rule,), op("PUT", f"/v2/{repository}/manifests/{tag}"))
    assert pushed == Overwrite(repository, tag, rule)


# glob_covers: tables, then soundness against random instances.


@pytest.mark.parametrize(
    ("wide", "narrow", "covers"),
    [
        ("**", "a/b/*", True),
        ("**", "${user}/**", True),
        ("a/**", "a/b/c", True),
        ("a/**", "a/*", True),
        ("a/*", "a/**", False),
        ("a/*", "a/b/c", False),
        ("*", "${user}", False),  # a user name may hold a '/'
        ("${user}/*", "${user}/app", True),
        ("${user}/*", "${group}/app", False),
        ("v*", "v1.*", True),
        ("v*", "v", True),
        ("v*", "x*", False),
        ("v?", "v1", True),
        ("v?", "v*", False),
        ("*", "?", True),
        ("?", "*", False),
        ("a*b", "a*b", True),
        ("a*b", "ab", True),
        ("a*b", "a*", False),
        ("", "", True),
        ("a", "", False),
    ],
)
def test_glob_covers(wide: str, narrow: str, covers: bool) -> None:
    assert glob_covers(wide, narrow) is covers


_GLOB_ALPHABET = "ab/*?"
# What each wildcard accepts; built once, not at every draw (building a strategy costs more
# than drawing from it).
_FILLS = {
    "**": st.text("ab/", max_size=4),
    "*": st.text("ab", max_size=3),
    "?": st.sampled_from("ab"),
}


@st.composite
def _instance(draw: st.DrawFn, glob: str) -> str:
    """A name `glob` matches: each wildcard replaced by random text it accepts."""
    parts = re.split(r"(\*\*|\*|\?)", glob)
    return "".join(draw(_FILLS[part]) if part in _FILLS else part for part in parts)


_WIDER = {"a": ["a", "?", "*", "**"], "b": ["b", "?", "*", "**"], "/": ["/", "**"],
          "?": ["?", "*", "**"], "*": ["*", "**"], "**": ["**"]}  # fmt: skip
_NARROW = st.lists(st.sampled_from(sorted(_WIDER)), max_size=6)
_WIDENED = {token: st.sampled_from(wider) for token, wider in _WIDER.items()}


@st.composite
def _widened(draw: st.DrawFn) -> tuple[str, str]:
    """A glob, and one made from it by widening each token: the first must be covered."""
    narrow = draw(_NARROW)
    wide = [draw(_WIDENED[token]) for token in narrow]
    return "".join(wide), "".join(narrow)


@given(pair=_widened(), data=st.data())
def test_glob_covers_is_sound(pair: tuple[str, str], data: st.DataObject) -> None:
    """A glob widened token by token covers the original, and every name the original
    matches, the wider one matches too."""
    wide, narrow = pair
    assert glob_covers(wide, narrow)
    for _ in range(5):
        name = data.draw(_instance(narrow))
        assert glob_regex(narrow).fullmatch(name)
        assert glob_regex(wide).fullmatch(name), (wide, narrow, name)


@given(
    wide=st.text(_GLOB_ALPHABET, max_size=6),
    narrow=st.text(_GLOB_ALPHABET, max_size=6),
    data=st.data(),
)
def test_glob_covers_never_claims_too_much(wide: str, narrow: str, data: st.DataObject) -> None:
    """Arbitrary pairs: whenever covering is claimed, the names bear it out."""
    if glob_covers(wide, narrow):
        name = data.draw(_instance(narrow))
        assert glob_regex(wide).fullmatch(name), (wide, narrow, name)


@given(glob=st.text(_GLOB_ALPHABET + "${}user", max_size=10))
def test_a_glob_covers_itself(glob: str) -> None:
    assert glob_covers(glob, glob)
    assert glob_covers("**", glob)
