"""`regproxy replay` as a user runs it: the config's files against proposed ones, the report
as text and as JSON, exit codes CI can gate on (0 nothing changes, 1 something does, 2 the
input cannot be used), logs plain, gzip-compressed or on standard input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import htpasswd_text, regproxy

STAMP = "06/Dec/2026:10:00:00 +0000"
LOG = (
    f'127.0.0.1 - - [{STAMP}] "GET /v2/ HTTP/1.1" 401 87\n'
    f'127.0.0.1 - alice [{STAMP}] "PUT /v2/team/app/manifests/1 HTTP/1.1" 201 0\n'
    f'127.0.0.1 - bob [{STAMP}] "POST /v2/team/app/blobs/uploads/ HTTP/1.1" 403 100\n'
    f'127.0.0.1 - carol [{STAMP}] "GET /v2/team/app/manifests/1 HTTP/1.1" 200 500\n'
    "this line is no access line\n"
    '{"time": "2026-12-06T10:00:01+0000", "client": "::1", "user": "carol", "method": "GET",'
    ' "path": "/v2/library/x/manifests/1", "status": 200, "bytes": 1, "duration_ms": 1,'
    ' "user_agent": "x"}\n'
)
ACL = """\
- groups: [pusher]
  actions: ["*"]
- groups: [team]
  repositories: ["team/**"]
  actions: [pull, push]
- repositories: ["library/**"]
  actions: [pull]
"""


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    (tmp_path / "htpasswd").write_text(htpasswd_text({u: "pw" for u in ("alice", "bob", "carol")}))
    (tmp_path / "groups").write_text("pusher: alice\nteam: bob\n")
    (tmp_path / "regproxy.yaml").write_text("htpasswd: htpasswd\ngroups: groups\n")
    (tmp_path / "acl.yaml").write_text(ACL)
    (tmp_path / "access.log").write_text(LOG)
    return tmp_path


def test_a_proposed_acl_reports_what_changes(setup: Path) -> None:
    done = regproxy("replay", "-c", "regproxy.yaml", "--acl", "acl.yaml", "access.log", cwd=setup)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "bob push team/app: deny 403 -> allow, 1 request, at 2026-12-06T10:00:00Z",
        "  before: rule built-in: valid-user",
        "  after:  rule acl.yaml:3",
        "  first:  access.log:3",
        "carol pull team/app: allow -> deny 403, 1 request, at 2026-12-06T10:00:00Z",
        "  before: rule built-in: valid-user",
        "  after:  no rule matched (deny by default)",
        "  first:  access.log:4",
        "not decided, what the log cannot tell:",
        "  refused before authentication, sender unknown: 1 (access.log:1)",
        "malformed lines: 1 (access.log:5)",
        "replay: 5 requests, 4 decided: 2 would be answered differently (2 changes);"
        " 1 not decided; 1 malformed line",
    ]


def test_json_gzip_and_stdin_say_the_same(setup: Path) -> None:
    (setup / "access.log.1").write_bytes(gzip.compress(LOG.encode()))
    args = ("replay", "-c", "regproxy.yaml", "--acl", "acl.yaml", "--json")
    plain = regproxy(*args, "access.log", cwd=setup)
    packed = regproxy(*args, "access.log.1", cwd=setup)
    piped = regproxy(*args, "-", cwd=setup, stdin=LOG)
    reports = [json.loads(done.stdout) for done in (plain, packed, piped)]
    assert [done.returncode for done in (plain, packed, piped)] == [1, 1, 1]
    for report in reports:
        del report["logs"]
        for change in report["changes"]:
            change["first_line"] = change["first_line"].split(":")[-1]
        report["malformed"]["first_lines"] = ["5"]
        report["not_decided"]["before_authentication"]["first_lines"] = ["1"]
    assert reports[0] == reports[1] == reports[2]
    assert [(c["user"], c["action"], c["count"]) for c in reports[0]["changes"]] == [
        ("bob", "push", 1),
        ("carol", "pull", 1),
    ]


def test_nothing_changes_exit_0_and_a_proposed_htpasswd(setup: Path) -> None:
    same = regproxy("replay", "-c", "regproxy.yaml", "access.log", cwd=setup)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.splitlines()[-1].startswith("replay: 5 requests, 4 decided: 0 would")
    (setup / "htpasswd.new").write_text(htpasswd_text({"alice": "pw", "bob": "pw"}))
    gone = regproxy("replay", "-c", "regproxy.yaml", "--htpasswd", "htpasswd.new", "access.log",
                    cwd=setup)  # fmt: skip
    assert gone.returncode == 1
    assert gone.stdout.startswith(
        "carol pull library/x, team/app: allow -> unknown user 401, 2 requests"
    )
    assert "  after:  not in htpasswd.new" in gone.stdout
    (setup / "groups.new").write_text("team: bob\n")
    (setup / "proposed.yaml").write_text("htpasswd: htpasswd\ngroups: groups.new\n")
    moved = regproxy("replay", "-c", "regproxy.yaml", "--proposed-config", "proposed.yaml",
                     "access.log", cwd=setup)  # fmt: skip
    assert moved.returncode == 1
    assert moved.stdout.startswith("alice push team/app: allow -> deny 403, 1 request")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("missing.log",), "missing.log: cannot read: No such file or directory"),
        (("--acl", "nowhere.yaml", "access.log"), "nowhere.yaml"),
        (("empty.log",), "nothing to replay"),
        (("cut.log.gz",), "cut.log.gz: compressed data ends early, after line "),
    ],
)
def test_unusable_input_exits_2(setup: Path, args: tuple[str, ...], message: str) -> None:
    (setup / "empty.log").write_text("not an access line\n")
    (setup / "cut.log.gz").write_bytes(gzip.compress(LOG.encode() * 50)[:-40])
    done = regproxy("replay", "-c", "regproxy.yaml", *args, cwd=setup)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_replay_and_its_exit_codes(setup: Path) -> None:
    assert "replay" in regproxy("--help", cwd=setup).stdout
    text = regproxy("replay", "--help", cwd=setup).stdout
    assert "--proposed-config" in text and "1    some requests would be answered" in text


def _long_log(lines: int) -> str:
    """`lines` requests that change nothing, then LOG: what changes is in its last piece."""
    same = f'10.0.0.2 - carol [{STAMP}] "GET /v2/library/x/manifests/{{}} HTTP/1.1" 200 512\n'
    return "".join(same.format(n) for n in range(lines)) + LOG


def test_jobs_report_what_one_process_reports(setup: Path) -> None:
    # Plain logs split into byte ranges of whole lines, gzip logs read whole by a process:
    # the same report, line numbers and all, as one process reading them in turn.
    (setup / "a.log").write_text(_long_log(3000))
    (setup / "b.log.gz").write_bytes(gzip.compress(_long_log(1000).encode()))
    (setup / "c.log").write_text(LOG + _long_log(2000))
    logs = ("a.log", "b.log.gz", "c.log", "a.log")
    args = ("replay", "-c", "regproxy.yaml", "--acl", "acl.yaml", *logs)
    for extra in (("--json",), ()):
        one = regproxy(*args, *extra, "--jobs", "1", cwd=setup)
        many = regproxy(*args, *extra, "--jobs", "4", cwd=setup)
        assert (one.returncode, many.returncode) == (1, 1), one.stderr + many.stderr
        assert many.stdout == one.stdout
    where = "a.log:3005, b.log.gz:1005, c.log:5, c.log:2011, a.log:3005"
    assert f"malformed lines: 5 ({where})" in many.stdout
    assert "  first:  a.log:3003" in many.stdout


def test_a_log_cut_short_names_the_line_with_jobs(setup: Path) -> None:
    (setup / "a.log").write_text(_long_log(3000))
    (setup / "cut.log.gz").write_bytes(gzip.compress(_long_log(3000).encode())[:-40])
    args = ("replay", "-c", "regproxy.yaml", "a.log", "cut.log.gz")
    one = regproxy(*args, "--jobs", "1", cwd=setup)
    many = regproxy(*args, "--jobs", "3", cwd=setup)
    assert (one.returncode, many.returncode) == (2, 2)
    assert one.stderr.startswith("cut.log.gz: compressed data ends early, after line 30")
    assert many.stderr == one.stderr
