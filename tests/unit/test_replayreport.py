"""A replay's report: the text an operator reads (each change, what was not decided, the
summary line) and the same as JSON."""

from __future__ import annotations

import json

from proxy.observe.replayreport import as_json, text_lines
from tests.unit.test_replay import MANIFEST, TEAM, T, line, policy, replayed


def test_the_report_reads_as_an_operator_reads_it() -> None:
    replay = replayed(
        policy(), policy(TEAM),
        line(None, "GET", "/v2/", 401),
        line("carol", "GET", MANIFEST),
        None,
        line("carol", "GET", "/v2/team/web/manifests/1", at=T + 5),
    )  # fmt: skip
    assert text_lines(replay) == [
        "carol pull team/app, team/web: allow -> deny 403, 2 requests,"
        " 2026-12-06T10:00:00Z to 2026-12-06T10:00:05Z",
        "  before: rule built-in: valid-user",
        "  after:  no rule matched (deny by default)",
        "  first:  access.log:2",
        "not decided, what the log cannot tell:",
        "  refused before authentication, sender unknown: 1 (access.log:1)",
        "malformed lines: 1 (access.log:3)",
        "replay: 3 requests, 2 decided: 2 would be answered differently (1 change);"
        " 1 not decided; 1 malformed line",
    ]
    report = json.loads(json.dumps(as_json(replay, ["access.log"])))
    assert report["changed"] == 2 and report["changes"][0]["repository_names"] == [
        "team/app", "team/web"]  # fmt: skip
    assert report["changes"][0]["after"] == {
        "allowed": False, "status": 403, "upstream": None, "mount_dropped": False,
        "known_user": True, "by": "no rule matched (deny by default)",
    }  # fmt: skip
    assert report["not_decided"]["before_authentication"] == {
        "count": 1, "first_lines": ["access.log:1"]}  # fmt: skip


def test_many_repositories_become_one_glob_with_how_many() -> None:
    lines = [line("carol", "GET", f"/v2/team/app{n}/manifests/1") for n in range(5)]
    first = text_lines(replayed(policy(), policy(TEAM), *lines))[0]
    assert first.startswith("carol pull team/* (5 repositories): allow -> deny 403, 5 requests")
