"""The `oidc:` section: what loads, and every problem with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from proxy.config import load
from proxy.problems import ConfigError

GOOD = """\
oidc:
  basic_user: oidc
  clock_skew: 30
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
    github, gitlab = oidc.issuers
    assert github.audiences == ("https://registry.example.org",)
    assert github.groups == (("repository_owner", "github:"),)
    assert github.required == (("repository_owner", ("acme",)),)
    assert github.origin == f"{config}:5"
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


def test_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = tmp_path / "regproxy.yaml"
    config.write_text("oidc:\n  issuers:\n" + ISSUER + "      ca_file: ca.pem\n")
    with pytest.raises(ConfigError, match=r"regproxy.yaml:6: oidc.issuers.ca_file: no usable CA"):
        load(config)
