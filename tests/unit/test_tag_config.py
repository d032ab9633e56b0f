"""Tag rules in ACL files and the config: parsing, every problem as file:line, tag patterns
that can never match, and the shipped example (conf/acl/release-tags.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.conf.config import load
from proxy.core.problems import ConfigError, read_text
from proxy.http.routes import Operation, classify
from proxy.policy.acl import parse_acl_document, parse_acl_text
from proxy.policy.identity import Identity
from proxy.policy.rules import decide
from proxy.policy.tagrules import Denied, Overwrite, Pointers, TagRule, plan

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "acl" / "release-tags.yaml"


def problems_of(text: str) -> list[str]:
    _, _, problems = parse_acl_document(text, "acl.yaml")
    return [str(p) for p in problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "- tags: ['v/1']\n  actions: [pull]\n",
            "acl.yaml:1: tags: bad tag glob 'v/1'", id="slash-in-tag-glob",
        ),
        pytest.param(
            "- tags: ['${claim}-*']\n  actions: [pull]\n",
            "acl.yaml:1: tags: unknown placeholder", id="unknown-placeholder",
        ),
        pytest.param(
            "- tags: []\n  actions: [pull]\n",
            "acl.yaml:1: tags: expected a name or a list of names", id="empty-tags",
        ),
        pytest.param(
            "- anonymous: true\n  tags: ['${user}']\n  actions: [pull]\n",
            "acl.yaml:1: anonymous entries have no ${user} or ${group}", id="anonymous-user-tag",
        ),
        pytest.param(
            "- groups: [ci]\n  actions: [push]\n- groups: [ci]\n  tags: ['v*']\n"
            "  actions: [pull]\n",
            "acl.yaml:3: unreachable: rule acl.yaml:1 matches every tag first",
            id="rule-without-tags-first",
        ),
        pytest.param(
            "- repositories: ['apps/**']\n  tags: ['*']\n  actions: [pull]\n"
            "- groups: [ci]\n  repositories: ['apps/web']\n  tags: ['sha-*', 'v?']\n"
            "  actions: [push]\n",
            "acl.yaml:4: unreachable: rule acl.yaml:1 matches these tags first",
            id="wider-tag-rule-first",
        ),
        pytest.param(
            "- users: [a, b]\n  tags: ['v*']\n  actions: [pull]\n"
            "- users: [a]\n  tags: ['v1*', 'x']\n  actions: [push]\n",
            "acl.yaml:4: tag pattern 'v1*' never matches: rule acl.yaml:1 matches it first",
            id="one-dead-pattern",
        ),
        pytest.param(
            "- tags: ['v*', 'v1.*']\n  actions: [pull]\n",
            "acl.yaml:1: tag pattern 'v1.*' is already matched by 'v*'", id="same-rule",
        ),
        pytest.param(
            "- networks: [10.0.0.0/8]\n  tags: ['*']\n  actions: [pull]\n"
            "- networks: [10.1.0.0/16]\n  tags: [latest]\n  actions: [push]\n",
            "acl.yaml:4: unreachable: rule acl.yaml:1 matches these tags first", id="subnet",
        ),
        pytest.param(
            "- actions: [pull]\n- tags: ['v*']\n  actions: [push]\n",
            "acl.yaml:2: unreachable: rule acl.yaml:1 matches first", id="after-catch-all",
        ),
        pytest.param(
            "acl:\n  - actions: [pull]\nimmutable_tags:\n  - repositories: ['a/**']\n",
            "acl.yaml:4: immutable_tags entry without 'tags'", id="immutable-without-tags",
        ),
        pytest.param(
            "acl:\n  - actions: [pull]\nimmutable_tags:\n  - tags: ['${user}-*']\n",
            "acl.yaml:4: tags: '${user}-*': placeholders are for ACL rules, not here",
            id="immutable-placeholder",
        ),
        pytest.param(
            "acl:\n  - actions: [pull]\nprotected_deletes:\n  - repositories: [a]\n"
            "    allow_by_digest: yes please\n",
            "acl.yaml:5: allow_by_digest: expected true or false", id="allow-by-digest-type",
        ),
        pytest.param(
            "acl:\n  - actions: [pull]\nprotected_deletes:\n  - repositories: [a]\n"
            "    actions: [delete]\n",
            "acl.yaml:5: unknown protected_deletes key 'actions'", id="protected-unknown-key",
        ),
        pytest.param(
            "acl:\n  - actions: [pull]\nimmutable_tags: {tags: [v1]}\n",
            "acl.yaml:3: immutable_tags: expected a list of rules", id="section-not-a-list",
        ),
        pytest.param(
            "acl:\n  - actions: [pull]\nimutable_tags: []\n",
            "acl.yaml:3: unknown key 'imutable_tags' in an ACL file", id="misspelt-section",
        ),
        pytest.param(
            "immutable_tags:\n  - tags: [v1]\n",
            "acl.yaml:1: no 'acl:' list in this file", id="no-acl",
        ),
    ],
)  # fmt: skip
def test_problems_name_file_and_line(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    "text",
    [
        # Partial overlaps are how "everything else" is written: never a problem.
        "- groups: [ci]\n  tags: ['sha-*']\n  actions: [push]\n"
        "- groups: [ci]\n  tags: ['*']\n  actions: [pull]\n"
        "- groups: [ci]\n  actions: [push]\n",
        # A tag rule for a group after one for a user of it: the rule may match others.
        "- users: [a]\n  tags: ['*']\n  actions: [pull]\n- groups: [g]\n  tags: [v1]\n"
        "  actions: [push]\n",
        # Different repositories, different networks, anonymous apart.
        "- repositories: ['a/*']\n  tags: ['*']\n  actions: [pull]\n"
        "- repositories: ['a/**']\n  tags: [v1]\n  actions: [push]\n"
        "- anonymous: true\n  tags: ['*']\n  actions: [pull]\n"
        "- networks: ['::1/128']\n  tags: [v1]\n  actions: [pull]\n",
        # A placeholder may hold a '/': `*` does not cover it.
        "- repositories: ['*/**']\n  tags: ['*']\n  actions: [pull]\n"
        "- repositories: ['${user}/**']\n  tags: [v1]\n  actions: [push]\n",
    ],
)
def test_overlapping_but_reachable_tag_rules_are_fine(text: str) -> None:
    assert problems_of(text) == []


def test_acl_file_sections() -> None:
    text = (
        "acl:\n  - actions: [pull]\n"
        "immutable_tags:\n  - repositories: ['apps/**']\n    tags: ['v*']\n"
        "    description: releases\n"
        "protected_deletes:\n  - repositories: ['base/**']\n"
        "  - repositories: [scratch/x]\n    tags: [latest]\n    allow_by_digest: true\n"
    )
    rules, tag_rules, problems = parse_acl_document(text, "acl.yaml")
    assert problems == [] and len(rules) == 1
    assert tag_rules == (
        TagRule("immutable", ("apps/**",), ("v*",), origin="acl.yaml:4"),
        TagRule("protected", ("base/**",), origin="acl.yaml:8"),
        TagRule("protected", ("scratch/x",), ("latest",), True, origin="acl.yaml:9"),
    )
    assert tag_rules[0].description == "releases"
    assert parse_acl_text(text, "acl.yaml") == (rules, [])


def test_config_sections_come_first_then_the_acl_file(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "acl:\n  - actions: [pull]\nimmutable_tags:\n  - tags: ['v*']\n"
    )
    (tmp_path / "other.yaml").write_text("- actions: [pull]\n")
    config = tmp_path / "regproxy.yaml"
    config.write_text(
        "acl: rules.yaml\nprotected_deletes:\n  - repositories: ['base/**']\nimmutable_tags: null\n"
    )
    loaded = load(config)
    assert [(r.kind, r.origin) for r in loaded.tag_rules] == [
        ("protected", f"{config}:3"),
        ("immutable", f"{tmp_path / 'rules.yaml'}:4"),
    ]
    # A flag naming another ACL file replaces that file's tag rules, not the config's own.
    flagged = load(config, {"acl": str(tmp_path / "other.yaml")})
    assert [r.kind for r in flagged.tag_rules] == ["protected"]
    # Without any ACL (the recipe's policy) tag rules hold too.
    config.write_text("immutable_tags:\n  - tags: [latest]\n")
    assert load(config).acl is None and load(config).tag_rules[0].tags == ("latest",)


def test_config_problems_in_tag_sections(tmp_path: Path) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text("immutable_tags:\n  - repositories: ['Apps/**']\n    tags: [v1]\n")
    with pytest.raises(ConfigError, match=r"regproxy\.yaml:2: repositories: bad glob 'Apps/\*\*'"):
        load(config)
    config.write_text("immutable_tags: v1\n")
    with pytest.raises(ConfigError, match=r"regproxy\.yaml:1: immutable_tags: expected a list"):
        load(config)


# --------------------------------------------------------------------------------------------
# The shipped example
# --------------------------------------------------------------------------------------------


def test_example_parses_cleanly() -> None:
    rules, tag_rules, problems = parse_acl_document(read_text(EXAMPLE), str(EXAMPLE))
    assert problems == []
    assert len(rules) == 6 and len(tag_rules) == 3


ADMIN = Identity("root", frozenset({"admin"}))
CI = Identity("robot", frozenset({"ci"}))
RELEASE = Identity("rel", frozenset({"release"}))
ALICE = Identity("alice")


@pytest.mark.parametrize(
    ("who", "method", "path", "allowed"),
    [
        (CI, "PUT", "/v2/apps/web/manifests/sha-4e2a", True),
        (CI, "PUT", "/v2/apps/web/manifests/v1.2.0", False),
        (CI, "PUT", "/v2/apps/web/manifests/latest", False),
        (CI, "POST", "/v2/apps/web/blobs/uploads/", True),
        (CI, "PUT", "/v2/tools/x/manifests/sha-1", False),
        (RELEASE, "PUT", "/v2/apps/web/manifests/v1.2.0", True),
        (RELEASE, "PUT", "/v2/apps/web/manifests/sha-4e2a", False),
        (ALICE, "GET", "/v2/apps/web/manifests/v1.2.0", True),
        (ALICE, "PUT", "/v2/apps/web/manifests/v1.2.0", False),
        (ALICE, "POST", "/v2/apps/web/blobs/uploads/", False),
        (ADMIN, "DELETE", "/v2/apps/web/manifests/sha-1", True),
    ],
)
def test_example_decisions(who: Identity, method: str, path: str, allowed: bool) -> None:
    rules, _, _ = parse_acl_document(read_text(EXAMPLE), str(EXAMPLE))
    operation = classify(method, path)
    assert isinstance(operation, Operation)
    decision = decide(rules, who, operation.action, operation.repository, operation.tag)
    assert decision.allowed is allowed


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("PUT", "/v2/apps/web/manifests/v1.2.0", Overwrite),
        ("DELETE", "/v2/apps/web/manifests/v1.2.0", Denied),
        ("DELETE", "/v2/apps/web/manifests/sha256:" + "1" * 64, Pointers),
        ("DELETE", "/v2/base/debian/manifests/sha256:" + "1" * 64, Denied),
        ("DELETE", "/v2/scratch/x/manifests/try", Denied),
        ("DELETE", "/v2/scratch/x/manifests/sha256:" + "1" * 64, type(None)),
    ],
)
def test_example_tag_rules(method: str, path: str, expected: type) -> None:
    _, tag_rules, _ = parse_acl_document(read_text(EXAMPLE), str(EXAMPLE))
    operation = classify(method, path)
    assert isinstance(operation, Operation)
    assert isinstance(plan(tag_rules, operation), expected)


_KEYS = st.sampled_from(
    ["acl", "immutable_tags", "protected_deletes", "tags", "repositories", "groups",
     "actions", "allow_by_digest", "description", "users", "x"]
)  # fmt: skip
_LEAVES = st.one_of(
    st.sampled_from(["v*", "*", "apps/**", "${user}-*", "push", "ci", "a?", ""]),
    st.booleans(),
    st.none(),
    st.integers(-1, 2),
)
_DOCUMENTS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=16,
)


@given(_DOCUMENTS)
def test_acl_documents_never_raise(document: object) -> None:
    """Any shape of ACL file: rules, tag rules and problems, every one of them in the file."""
    text = yaml.safe_dump(document)
    rules, tag_rules, problems = parse_acl_document(text, "acl.yaml")
    assert all(r.origin.startswith("acl.yaml:") for r in (*rules, *tag_rules))
    assert all(p.source == "acl.yaml" for p in problems)
