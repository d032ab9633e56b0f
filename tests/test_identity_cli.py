"""`regproxy robot create|list|revoke`, `explain --claims` and robots, and `check` of the new
sections, as users run them (subprocesses)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from proxy.authn.robotfile import SECRET_RE
from tests.conftest import SECRET, TlsPair, regproxy, write_setup

ACL = """acl:
  - claims: {repository_owner: acme, ref: "refs/tags/v*"}
    repositories: [apps/app]
    actions: [pull, push]
  - groups: [pusher]
    actions: "*"
  - actions: [pull]
    repositories: ["library/**"]
"""
OIDC = """oidc:
  issuers:
    - issuer: https://token.actions.githubusercontent.com
      audience: https://registry.test
      user: "ci:{repository}"
      groups: {repository_owner: "github:"}
      required: {repository_owner: "acme"}
"""


@pytest.fixture
def setup(tmp_path: Path, tls: TlsPair) -> Path:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", ACL + OIDC)
    config.write_text(config.read_text() + "robots: robots.yaml\nsecret_file: server.secret\n")
    return config


def robot(setup: Path, *args: str) -> tuple[int, str, str]:
    done = regproxy("robot", *args, "-c", str(setup), cwd=setup.parent)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def test_create_prints_the_secret_once_and_keeps_only_its_hash(setup: Path) -> None:
    code, out, err = robot(
        setup, "create", "ci", "--repositories", "apps/**", "--actions", "pull,push",
        "--expires", "30d", "--owner", "push", "--description", "release: app",
    )  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert SECRET_RE.fullmatch(secret) and out == secret + "\n"  # stdout: the secret alone
    assert "log in as 'robot$ci'" in err and "not shown again" in err
    secret_file = setup.parent / "server.secret"
    assert "made a new server secret" in err
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    text = (setup.parent / "robots.yaml").read_text()
    assert secret not in text and "hmac-sha256:" in text and "description: 'release: app'" in text
    listed = robot(setup, "list")
    assert listed[0] == 0 and secret not in listed[1] and "ci" in listed[1]
    again = robot(
        setup, "create", "ci", "--repositories", "x", "--actions", "pull", "--expires", "1d"
    )
    assert again[2] == "a robot named 'ci' exists: revoke it first\n"
    assert regproxy("check", "-c", str(setup), cwd=setup.parent).stdout == "configuration ok\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad_Name", "--repositories", "x", "--actions", "pull", "--expires", "1d"],
         "robot name 'Bad_Name'"),
        (["ci", "--repositories", "Apps/x", "--actions", "pull", "--expires", "1d"],
         "--repositories: bad glob 'Apps/x'"),
        (["ci", "--repositories", "${user}/**", "--actions", "pull", "--expires", "1d"],
         "--repositories: no ${user} or ${group} in a robot scope"),
        (["ci", "--repositories", "x", "--actions", "pull,write", "--expires", "1d"],
         "--actions: expected pull, push, delete"),
        (["ci", "--repositories", "x", "--actions", "pull", "--expires", "never"],
         "--expires: expected 30d, 12h, 2w or an ISO 8601 date"),
        (["ci", "--repositories", "x", "--actions", "pull", "--expires", "2001-01-01"],
         "--expires: the expiry is in the past"),
        (["ci", "--repositories", "x", "--actions", "pull", "--expires", "1d", "--owner", "nobody"],
         "--owner: 'nobody' is not a user of"),
    ],
)  # fmt: skip
def test_create_refuses_bad_arguments(setup: Path, args: list[str], message: str) -> None:
    code, out, err = robot(setup, "create", *args)
    assert (code, out) == (2, "") and err.startswith(message), err
    assert not (setup.parent / "robots.yaml").exists()


def test_without_a_robots_file_in_the_config(tmp_path: Path, tls: TlsPair) -> None:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000")
    done = regproxy("robot", "list", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 1 and "no robots: file" in done.stderr


def test_robots_need_a_secret_file(tmp_path: Path, tls: TlsPair) -> None:
    config = write_setup(tmp_path, tls, "http://127.0.0.1:5000", "robots: robots.yaml\n")
    done = regproxy("check", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 1 and "robots needs secret_file" in done.stderr


def test_check_reports_a_bad_robot_with_its_line(setup: Path) -> None:
    robot(setup, "create", "ci", "--repositories", "x", "--actions", "pull", "--expires", "1d")
    robots = setup.parent / "robots.yaml"
    lines = robots.read_text().count("\n")
    robots.write_text(robots.read_text() + "- name: broken\n  actions: [pull]\n")
    done = regproxy("check", "-c", str(setup), cwd=setup.parent)
    assert done.returncode == 1
    assert f"{robots}:{lines + 1}: robot disabled: missing repositories" in done.stderr
    listed = robot(setup, "list")
    assert listed[0] == 0 and "ci" in listed[1] and "broken" not in listed[1]
    assert f"{robots}:{lines + 1}" in listed[2]


def test_a_short_secret_file_is_refused(setup: Path) -> None:
    (setup.parent / "server.secret").write_text("short\n")
    done = regproxy("check", "-c", str(setup), cwd=setup.parent)
    assert done.returncode == 1 and "server.secret: secret_file: at least 32" in done.stderr


def explain(setup: Path, *args: str) -> tuple[int, str]:
    secret = setup.parent / "server.secret"
    if not secret.exists():  # `robot create` makes it; explain only reads it
        secret.write_text(SECRET + "\n")
    done = regproxy("explain", "-c", str(setup), *args, cwd=setup.parent)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout + done.stderr


CLAIMS = {
    "iss": "https://token.actions.githubusercontent.com",
    "sub": "repo:acme/app:ref:refs/tags/v1.0",
    "repository": "acme/app",
    "repository_owner": "acme",
    "ref": "refs/tags/v1.0",
}


@pytest.mark.parametrize(
    ("claims", "action", "repository", "code", "first_line", "detail"),
    [
        (CLAIMS, "push", "apps/app", 0, "ALLOW ci:acme/app push apps/app",
         "decided by: rule {acl}:10"),  # the first rule, after write_setup's 8 lines
        ({**CLAIMS, "ref": "refs/heads/main"}, "push", "apps/app", 3,
         "DENY ci:acme/app push apps/app", "no rule matched"),
        (CLAIMS, "pull", "library/x", 0, "ALLOW ci:acme/app pull library/x", "groups: github:acme"),
        ({**CLAIMS, "repository_owner": "evil"}, "pull", "library/x", 3,
         "REFUSED oidc: token claim repository_owner does not meet", ""),
        ({**CLAIMS, "iss": "https://elsewhere"}, "pull", "library/x", 3,
         "REFUSED oidc: token issuer 'https://elsewhere' not trusted", ""),
    ],
)  # fmt: skip
def test_explain_with_a_claims_file(
    setup: Path, claims: dict[str, str], action: str, repository: str, code: int,
    first_line: str, detail: str,
) -> None:  # fmt: skip
    path = setup.parent / "claims.json"
    path.write_text(json.dumps(claims))
    got, out = explain(setup, "oidc", action, repository, "--claims", str(path))
    assert got == code, out
    assert out.splitlines()[0].startswith(first_line)
    assert detail.format(acl=setup) in out


def test_explain_a_robot(setup: Path) -> None:
    robot(setup, "create", "ci", "--repositories", "apps/**", "--actions", "pull,push",
          "--expires", "1d", "--owner", "push")  # fmt: skip
    code, out = explain(setup, "robot$ci", "push", "apps/x")
    assert code == 0 and "robot ci acting as push" in out and "groups: pusher" in out
    code, out = explain(setup, "robot$ci", "delete", "apps/x")
    assert code == 3 and "outside the scopes of robot ci" in out
    code, out = explain(setup, "robot$nope", "pull", "apps/x")
    assert code == 3 and "no robot 'robot$nope'" in out
