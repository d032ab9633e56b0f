"""Claims as rules read them: lookup, text values, conditions (globs), user-name templates."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.claims import holds, lookup, render, template_names, texts, unmet

GITHUB = {
    "repository": "acme/app",
    "repository_owner": "acme",
    "ref": "refs/tags/v1.2",
    "ref_protected": "true",
    "run_attempt": 2,
    "private": True,
    "groups": ["dev", "ops", 3, None, {"x": 1}],
    "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder"}},
    "a/b": "slash-key",
    "nothing": None,
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("repository", ["acme/app"]),
        ("run_attempt", ["2"]),
        ("private", ["true"]),
        ("groups", ["dev", "ops", "3"]),
        ("kubernetes.io/namespace", ["ci"]),
        ("kubernetes.io/serviceaccount/name", ["builder"]),
        ("kubernetes.io", []),  # an object is never text
        ("a/b", ["slash-key"]),  # a key with a slash wins over a path
        ("nothing", []),
        ("missing", []),
        ("kubernetes.io/missing", []),
    ],
)
def test_texts(name: str, expected: list[str]) -> None:
    assert texts(GITHUB, name) == expected


@pytest.mark.parametrize(
    ("conditions", "first_unmet"),
    [
        ((("repository_owner", ("acme",)),), None),
        ((("ref", ("refs/tags/v*",)),), None),
        ((("ref", ("refs/heads/*", "refs/tags/*")),), None),
        ((("ref", ("refs/*",)),), "ref"),  # * stays within one part
        ((("ref", ("refs/**",)),), None),
        ((("ref", ("refs/tags/v?.?",)),), None),
        ((("repository_owner", ("ACME",)),), "repository_owner"),  # exact case
        ((("repository_owner", ("acm",)),), "repository_owner"),  # whole value
        ((("groups", ("ops",)),), None),  # any element of a list
        ((("private", ("true",)),), None),
        ((("missing", ("*",)),), "missing"),  # a missing claim never matches, not even *
        ((("nothing", ("*",)),), "nothing"),
        ((("kubernetes.io/namespace", ("ci",)), ("ref", ("x",))), "ref"),
        ((("ref", ("refs/tags/v[12]",)),), "ref"),  # [ is a literal, no classes
    ],
)
def test_conditions(conditions: tuple[tuple[str, tuple[str, ...]], ...], first_unmet: str | None
                    ) -> None:  # fmt: skip
    assert unmet(conditions, GITHUB) == first_unmet
    assert holds(conditions, GITHUB) is (first_unmet is None)


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("ci:{repository}", ["repository"]),
        ("{repository_owner}/{workflow}", ["repository_owner", "workflow"]),
        ("sub", ["sub"]),
        ("k8s:{kubernetes.io/namespace}", ["kubernetes.io/namespace"]),
        ("ci:{}", None),
        ("ci:{repo", None),
        ("ci:repo}", None),
        ("{a{b}}", None),
        ("{has space}", None),
        ("two words", None),
        ("", None),
    ],
)
def test_template_names(template: str, names: list[str] | None) -> None:
    assert template_names(template) == names


@pytest.mark.parametrize(
    ("template", "claims", "name"),
    [
        ("ci:{repository}", GITHUB, "ci:acme/app"),
        ("repository", GITHUB, "acme/app"),
        ("gh:{repository_owner}:{run_attempt}", GITHUB, "gh:acme:2"),
        ("k8s:{kubernetes.io/namespace}/{kubernetes.io/serviceaccount/name}", GITHUB,
         "k8s:ci/builder"),
        ("ci:{missing}", GITHUB, None),
        ("ci:{groups}", GITHUB, None),  # a list is not one name
        ("ci:{kubernetes.io}", GITHUB, None),
        ("ci:{x}", {"x": "a b"}, None),  # no spaces in a user name
        ("ci:{x}", {"x": "a\nb"}, None),
        ("{x}", {"x": ""}, None),
        ("ci:{x}", {"x": "{y}"}, "ci:{y}"),  # values are never read as templates
        ("ci:{x.__class__}", {"x": "v"}, None),  # nothing is evaluated
    ],
)  # fmt: skip
def test_render(template: str, claims: dict[str, Any], name: str | None) -> None:
    assert render(template, claims) == name


def test_lookup_prefers_the_exact_key() -> None:
    assert lookup({"a/b": 1, "a": {"b": 2}}, "a/b") == 1
    assert lookup({"a": {"b": 2}}, "a/b") == 2
    assert lookup({"a": [1]}, "a/0") is None


@given(st.text(max_size=30), st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
def test_render_never_raises(template: str, claims: dict[str, str]) -> None:
    result = render(template, claims)
    assert result is None or (result.isprintable() and " " not in result)
