"""scripts/conformance.py's own logic: reading the suite's junit.xml and comparing runs (pure)."""

from __future__ import annotations

from scripts.conformance import differences, parse_junit, regressions, render, tally

PREFIX = "OCI Distribution Conformance Tests "


def case(name: str, status: str, location: str | None = None, failure: bool = False) -> str:
    """One <testcase> as ginkgo writes it; `location` is where the [It] node is."""
    node = f"[It] {name}" if location else "[ReportAfterSuite] TOP-LEVEL"
    where = location or "00_conformance_suite_test.go:24"
    enter = f"&gt; Enter {node} - github.com/x/conformance/{where} @ 11/30/26"
    inner = '<failure message="Expected 404" type="failed">[FAILED]</failure>' if failure else ""
    if status == "skipped":
        inner = '<skipped message="skipped - you have skipped this test."></skipped>'
    return (
        f'<testcase name="{name}" classname="conformance tests" status="{status}" time="0.01">'
        f"{inner}<system-err>{enter}&#xA;</system-err></testcase>"
    )


def junit(*cases: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><testsuites tests="9">'
        f'<testsuite name="conformance tests" tests="9">{"".join(cases)}</testsuite></testsuites>'
    )


SAMPLE = junit(
    case(PREFIX + "Pull Setup Populate registry with test blob", "passed", "01_pull_test.go:18"),
    case(PREFIX + "Pull Setup Populate registry with test blob", "passed", "01_pull_test.go:36"),
    case(PREFIX + "Pull Setup Get tag name from environment", "skipped", "01_pull_test.go:101"),
    case(PREFIX + "Pull manifests GET nonexistent manifest", "failed", "01_pull_test.go:196", True),
    case(PREFIX + "Push Mount without from", "passed", "02_push_test.go:259"),
    case("html custom reporter", "passed"),  # a suite-level node, not a test
)


def test_parse_junit_keys_tests_by_name_and_location_when_names_repeat() -> None:
    assert parse_junit(SAMPLE) == {
        "Pull Setup Populate registry with test blob (01_pull_test.go:18)": "passed",
        "Pull Setup Populate registry with test blob (01_pull_test.go:36)": "passed",
        "Pull Setup Get tag name from environment": "skipped",
        "Pull manifests GET nonexistent manifest": "failed",
        "Push Mount without from": "passed",
    }


def test_parse_junit_keeps_suite_nodes_that_did_not_pass() -> None:
    broken = junit(
        case("[BeforeSuite] setup", "failed", None, True), case("x", "passed", "a_test.go:1")
    )
    assert parse_junit(broken) == {"[BeforeSuite] setup": "failed", "x": "passed"}


def test_a_failure_element_counts_whatever_the_status_says() -> None:
    text = junit(
        case("a", "passed", "a_test.go:1", failure=True), case("b", "timedout", "a_test.go:2")
    )
    assert parse_junit(text) == {"a": "failed", "b": "failed"}


def test_tally() -> None:
    assert tally(parse_junit(SAMPLE)) == {"passed": 3, "failed": 1, "skipped": 1}
    assert tally({}) == {"passed": 0, "failed": 0, "skipped": 0}


DIRECT = {"a": "passed", "b": "failed", "c": "passed", "d": "skipped"}
DEFAULT = {"a": "passed", "b": "passed", "c": "failed", "d": "skipped"}
NAMESPACES = {"a": "passed", "b": "failed", "d": "skipped"}  # c missing: the suite stopped


def test_differences_in_suite_order() -> None:
    runs = {"direct": DIRECT, "default": DEFAULT, "namespaces": NAMESPACES}
    assert differences(runs) == [
        ("b", ["failed", "passed", "failed"]),
        ("c", ["passed", "failed", "missing"]),
    ]
    assert differences({"direct": DIRECT, "default": dict(DIRECT)}) == []


def test_regressions_are_tests_passing_directly_only() -> None:
    proxied = {"default": DEFAULT, "namespaces": NAMESPACES}
    assert regressions(DIRECT, proxied) == [
        ("default", "c", "failed"),
        ("namespaces", "c", "missing"),
    ]
    # Passing through the proxy what fails directly is no regression.
    assert regressions(DIRECT, {"default": DIRECT | {"b": "passed"}}) == []


def test_render_side_by_side() -> None:
    text = render({"direct": DIRECT, "default": DEFAULT, "namespaces": NAMESPACES})
    lines = text.splitlines()
    assert lines[0].split() == ["direct", "default", "namespaces"]
    assert lines[1].split() == ["passed", "2", "2", "1"]
    assert lines[2].split() == ["failed", "1", "1", "1"]
    assert lines[3].split() == ["skipped", "1", "1", "1"]
    assert "tests whose outcome differs (2):" in text
    assert lines[-1].split() == ["c", "passed", "failed", "missing"]
    same = render({"direct": DIRECT, "default": DIRECT})
    assert same.endswith("every test has the same outcome in every run")
