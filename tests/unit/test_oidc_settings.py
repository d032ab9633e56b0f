"""The `oidc:` section: what loads, and every problem with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
import yaml

from proxy.authn.oidc_settings import OidcSettings
from proxy.conf.config import load
from proxy.core.problems import ConfigError

GOOD = """\
oidc:
  basic_user: oidc
  clock_skew: 30
  token_cache_ttl: 0
  token_cache_size: 500
  issuers:
    - issuer: https://token.actions.githubusercontent.com
      audience: https://registry.example.org
      user: "ci:{repository}"
      groups: {repository_owner: "github:"}
      required: {repository_owner: acme}
    - issuer: https://gitlab.example.org
      audience: [https://registry.example.org, regproxy]
      jwks_uri: https://gitlab.example.org/oauth/discovery/keys
      ca_file: ca.pem
      user: "gitlab:{project_path}"
"""


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_a_full_section_loads(tmp_path: Path, ca: Path) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text(GOOD)
    oidc = load(config).oidc
    assert oidc is not None
    assert (oidc.basic_user, oidc.clock_skew, oidc.timeout) == ("oidc", 30.0, 5.0)
    assert (oidc.jwks_max_size, oidc.token_cache_ttl, oidc.token_cache_size) == (
        1024 * 1024,
        0.0,
        500,
    )
    github, gitlab = oidc.issuers
    assert github.audiences == ("https://registry.example.org",)
    assert github.groups == (("repository_owner", "github:"),)
    assert github.required == (("repository_owner", ("acme",)),)
    assert github.origin == f"{config}:7"
    assert gitlab.ca_file == ca and gitlab.ca_pem == ca.read_text()
    assert gitlab.audiences == ("https://registry.example.org", "regproxy")
    assert oidc.issuer("https://gitlab.example.org") is gitlab
    assert ca in load(config).watched_files()


ISSUER = "    - issuer: https://i.example\n      audience: a\n      user: sub\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("oidc: []\n", 1, "oidc: expected a mapping"),
        ("oidc:\n  clock_skew: 1\n", 1, "oidc: no issuers"),
        ("oidc:\n  issuers: []\n", 2, "oidc.issuers: expected a list of issuers"),
        ("oidc:\n  bogus: 1\n  issuers:\n" + ISSUER, 2, "unknown key 'oidc.bogus'"),
        ("oidc:\n  clock_skew: 301\n  issuers:\n" + ISSUER, 2,
         "oidc.clock_skew: expected 0 to 300"),
        ("oidc:\n  timeout: 0\n  issuers:\n" + ISSUER, 2, "oidc.timeout: expected more than 0"),
        ("oidc:\n  basic_user: 'a b'\n  issuers:\n" + ISSUER, 2, "oidc.basic_user: expected"),
        ("oidc:\n  token_cache_ttl: -1\n  issuers:\n" + ISSUER, 2,
         "oidc.token_cache_ttl: expected 0 to 86400"),
        ("oidc:\n  token_cache_size: 0\n  issuers:\n" + ISSUER, 2,
         "oidc.token_cache_size: expected a whole number from 1 to 1000000, got 0"),
        ("oidc:\n  token_cache_size: true\n  issuers:\n" + ISSUER, 2,
         "oidc.token_cache_size: expected a whole number"),
        ("oidc:\n  jwks_max_size: 100\n  issuers:\n" + ISSUER, 2,
         "oidc.jwks_max_size: expected a whole number from 1024 to 16777216, got 100"),
        ("oidc:\n  issuers:\n    - issuer: http://i.example\n      audience: a\n      user: sub\n",
         3, "oidc.issuers.issuer: expected an https:// URL"),
        ("oidc:\n  issuers:\n    - issuer: https://i.example?x=1\n      audience: a\n"
         "      user: sub\n", 3, "oidc.issuers.issuer: expected an https:// URL without query"),
        ("oidc:\n  issuers:\n    - issuer: https://i.example\n      user: sub\n",
         3, "oidc.issuers: missing audience"),
        ("oidc:\n  issuers:\n    - issuer: https://i.example\n      audience: a\n",
         3, "oidc.issuers: missing user"),
        ("oidc:\n  issuers:\n" + ISSUER + "      user2: x\n", 6,
         "unknown key 'oidc.issuers.user2'"),
        ("oidc:\n  issuers:\n" + ISSUER.replace("user: sub", "user: 'ci:{repo'"),
         5, "oidc.issuers.user: expected a claim name or a template"),
        ("oidc:\n  issuers:\n" + ISSUER + "      groups: [a]\n", 6,
         "oidc.issuers.groups: expected a mapping"),
        ("oidc:\n  issuers:\n" + ISSUER + "      groups: {a: 'x y'}\n", 6,
         "oidc.issuers.groups: a: expected a prefix without spaces"),
        ("oidc:\n  issuers:\n" + ISSUER + "      required: {ref: []}\n", 6,
         "oidc.issuers.required: ref: expected a glob"),
        ("oidc:\n  issuers:\n" + ISSUER + "      ca_file: missing.pem\n", 6,
         "oidc.issuers.ca_file: no such file"),
        ("oidc:\n  issuers:\n" + ISSUER + "      jwks_uri: http://i.example/keys\n", 6,
         "oidc.issuers.jwks_uri: expected an https:// URL"),
        ("oidc:\n  issuers:\n" + ISSUER + ISSUER, 6,
         "oidc.issuers: https://i.example is listed twice"),
        ("oidc:\n  issuers:\n" + ISSUER + "      audience: b\n", 6, "oidc.issuers: duplicate key"),
        ("oidc:\n  issuers:\n" + ISSUER + ISSUER.replace("i.example", "j.example"), 6,
         "oidc.issuers.user: 'sub' can make the same names as 'sub' (https://i.example)"),
        ("oidc:\n  issuers:\n" + ISSUER.replace("sub", "'ci:{sub}'")
         + ISSUER.replace("i.example", "j.example").replace("sub", "'ci:x{sub}'"), 6,
         "oidc.issuers.user: 'ci:x{sub}' can make the same names as 'ci:{sub}'"),
    ],
)  # fmt: skip
def test_problems_have_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(config)
    (problem,) = caught.value.problems
    assert (problem.source, problem.line) == (str(config), line)
    assert problem.message.startswith(message), problem.message


def test_issuers_with_prefixes_of_their_own_load(tmp_path: Path) -> None:
    config = tmp_path / "regproxy.yaml"
    config.write_text(
        "oidc:\n  issuers:\n"
        + ISSUER.replace("sub", "'ci:{sub}'")
        + ISSUER.replace("i.example", "j.example").replace("sub", "'gl:{sub}'")
    )
    assert load(config).oidc is not None


def test_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = tmp_path / "regproxy.yaml"
    config.write_text("oidc:\n  issuers:\n" + ISSUER + "      ca_file: ca.pem\n")
    with pytest.raises(ConfigError, match=r"regproxy.yaml:6: oidc.issuers.ca_file: no usable CA"):
        load(config)


EXAMPLES = Path(__file__).resolve().parents[2] / "conf/oidc"
# Claims as each issuer sends them for a release build, and what must differ for a build that
# may not push.
RELEASES = {
    "github-actions.yaml": (
        {
            "iss": "https://token.actions.githubusercontent.com",
            "repository": "acme/app",
            "repository_owner": "acme",
            "ref": "refs/tags/v1.4.0",
            "job_workflow_ref": "acme/app/.github/workflows/release.yml@refs/tags/v1.4.0",
        },
        "apps/app",
        {"ref": "refs/heads/main"},
        "github:acme/app",
    ),
    "gitlab-ci.yaml": (
        {
            "iss": "https://gitlab.example.org",
            "project_path": "platform/app",
            "namespace_path": "platform",
            "ref_type": "tag",
            "ref_protected": "true",
        },
        "platform/app",
        {"ref_protected": "false"},
        "gitlab:platform/app",
    ),
    "kubernetes.yaml": (
        {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": "system:serviceaccount:ci:builder",
            "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder"}},
        },
        "apps/app",
        {"kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "tester"}}},
        "k8s:ci/builder",
    ),
}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_the_shipped_examples_load_and_decide_as_they_say(name: str, tmp_path: Path) -> None:
    from proxy.authn.oidc import identity_from
    from proxy.policy.identity import Identity
    from proxy.policy.rules import decide

    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(RELEASES)
    config = tmp_path / "regproxy.yaml"
    config.write_text((EXAMPLES / name).read_text())
    loaded = load(config)
    assert loaded.oidc is not None
    claims, repository, not_a_release, user = RELEASES[name]
    (issuer,) = loaded.oidc.issuers
    for changed, may_push in ((claims, True), ({**claims, **not_a_release}, False)):
        made, groups = identity_from(issuer, changed)
        assert made == user or not may_push
        who = Identity(made, groups, None, changed, issuer=issuer.issuer)
        assert decide(loaded.rules, who, "push", repository).allowed is may_push
        assert decide(loaded.rules, who, "pull", repository).allowed


def test_the_readme_config_examples_load(tmp_path: Path) -> None:
    """Every YAML block of the README's "CI and robot identities" that configures regproxy."""
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    section = readme.split("## CI and robot identities", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in section.split("```yaml\n")[1:] if not b.startswith("jobs:")]
    assert len(blocks) == 2
    (tmp_path / "regproxy.secret").write_text("x" * 40)
    for block in blocks:
        config = tmp_path / "regproxy.yaml"
        config.write_text(block.split("```", 1)[0])
        loaded = load(config)
        assert loaded.oidc is not None or loaded.robots == tmp_path / "robots.yaml"
    (workflow,) = [b for b in section.split("```yaml\n")[1:] if b.startswith("jobs:")]
    steps = yaml.safe_load(workflow.split("```", 1)[0])["jobs"]["release"]["steps"]
    audience = load_example("github-actions.yaml").issuers[0].audiences[0]
    assert f"&audience={audience}" in steps[1]["run"]
    assert steps[2]["with"]["username"] == "oidc"


def load_example(name: str) -> OidcSettings:
    settings = load(EXAMPLES / name).oidc
    assert settings is not None
    return settings
