"""`make conformance`: the OCI distribution-spec conformance suite, directly and through regproxy.

Runs the official conformance program (release v1.1.1) three times, each against a fresh
Debian `docker-registry` on a free loopback port with its own data dir, report dir and
credentials:

- direct: the registry itself (TLS and htpasswd, so the client side is the same);
- default: through `regproxy serve` with the default policy (a member of `pusher`);
- namespaces: through regproxy with conf/acl/namespaces.yaml, every repository under the
  user's own `${user}/**` namespace.

It prints the three tallies side by side and every test whose outcome differs, and exits 1
when a test that passes directly does not pass through the proxy (2 when the suite cannot run).
The binary comes from OCI_CONFORMANCE_BIN or ../shared/conformance/conformance.test next to
the checkout. Run from the checkout as a module (it uses `devtools`, shared with the tests):

    python -m scripts.conformance [--workers N] [--keep] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.authn.credentials import basic_header, hash_password

try:
    from devtools.net import free_port
    from devtools.processes import start, stop
    from devtools.registry import Registry
    from devtools.tls import TlsFiles, https_status, make_tls
except ModuleNotFoundError as exc:  # run as a file: the checkout is not on sys.path
    if exc.name != "devtools":
        raise
    sys.exit("run it from the checkout as `python -m scripts.conformance` (or `make conformance`)")

ROOT = Path(__file__).resolve().parents[1]
BINARY_ENV = "OCI_CONFORMANCE_BIN"
SHARED_BINARY = Path("..") / "shared" / "conformance" / "conformance.test"
WHERE_TO_GET = (
    "It is the OCI distribution-spec conformance program, release v1.1.1: build it with\n"
    "  git clone -b v1.1.1 https://github.com/opencontainers/distribution-spec\n"
    "  cd distribution-spec/conformance && go test -c   # writes conformance.test\n"
    f"then put it at {SHARED_BINARY} (next to the checkout) or set {BINARY_ENV}=/path/to/it."
)
NAMESPACES_ACL = ROOT / "conf" / "acl" / "namespaces.yaml"
SUITE_TIMEOUT = 600.0
START_TIMEOUT = 30.0
PREFIX = "OCI Distribution Conformance Tests "
# "> Enter [It] <text> - github.com/.../02_push_test.go:156 @ <time>" in each test's output.
_LOCATION = re.compile(r"Enter \[It\] .* - \S*/([\w.]+_test\.go:\d+) @")
OUTCOMES = ("passed", "failed", "skipped")


class SuiteError(RuntimeError):
    """The suite or what it runs against could not be started or gave no report."""


# --------------------------------------------------------------------------- results (pure)


def find_binary(environ: Mapping[str, str], root: Path) -> Path | str:
    """The conformance program, or a message saying why there is none and where to get it."""
    named = environ.get(BINARY_ENV)
    if named:
        path = Path(named)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        return f"{BINARY_ENV}={named} is not an executable file.\n{WHERE_TO_GET}"
    shared = (root / SHARED_BINARY).resolve()
    if shared.is_file() and os.access(shared, os.X_OK):
        return shared
    return f"no conformance program: {BINARY_ENV} is not set and {shared} does not exist.\n" + (
        WHERE_TO_GET
    )


def parse_junit(text: str) -> dict[str, str]:
    """{test: outcome} in suite order from the suite's junit.xml.

    A test is one `[It]` spec, named by its description plus its source location when two
    specs share a description. Suite-level nodes (reporters, BeforeSuite) count only when they
    did not pass, so a broken suite never looks clean.
    """
    cases: list[tuple[str, str | None, str]] = []
    for case in ET.fromstring(text).iter("testcase"):
        name = case.get("name", "").removeprefix(PREFIX)
        status = case.get("status", "")
        if case.find("failure") is not None or case.find("error") is not None:
            status = "failed"
        outcome = status if status in OUTCOMES else "failed"
        match = _LOCATION.search(case.findtext("system-err") or "")
        if match is None and outcome == "passed":
            continue
        cases.append((name, match.group(1) if match else None, outcome))
    counts = Counter(name for name, _, _ in cases)
    results: dict[str, str] = {}
    for name, location, outcome in cases:
        key = f"{name} ({location})" if counts[name] > 1 and location else name
        while key in results:
            key += "'"
        results[key] = outcome
    return results


def tally(results: Mapping[str, str]) -> dict[str, int]:
    counts = Counter(results.values())
    return {outcome: counts[outcome] for outcome in OUTCOMES}


def differences(runs: Mapping[str, Mapping[str, str]]) -> list[tuple[str, list[str]]]:
    """(test, outcome in each run) for every test whose outcome is not the same in all runs."""
    tests = list(dict.fromkeys(test for results in runs.values() for test in results))
    rows = [(test, [results.get(test, "missing") for results in runs.values()]) for test in tests]
    return [(test, outcomes) for test, outcomes in rows if len(set(outcomes)) > 1]


def regressions(
    direct: Mapping[str, str], proxied: Mapping[str, Mapping[str, str]]
) -> list[tuple[str, str, str]]:
    """(run, test, outcome) for every test passing directly that does not pass in a run."""
    return [
        (run, test, results.get(test, "missing"))
        for run, results in proxied.items()
        for test, outcome in direct.items()
        if outcome == "passed" and results.get(test) != "passed"
    ]


def render(runs: Mapping[str, Mapping[str, str]]) -> str:
    """The tallies side by side, then the tests whose outcome differs."""
    names = list(runs)
    width = max(len(name) for name in names) + 2
    lines = ["".ljust(10) + "".join(name.rjust(width) for name in names)]
    for outcome in OUTCOMES:
        counts = [tally(results)[outcome] for results in runs.values()]
        lines.append(outcome.ljust(10) + "".join(str(n).rjust(width) for n in counts))
    rows = differences(runs)
    if not rows:
        return "\n".join([*lines, "", "every test has the same outcome in every run"])
    test_width = max(len(test) for test, _ in rows) + 2
    lines += ["", f"tests whose outcome differs ({len(rows)}):"]
    lines.append("test".ljust(test_width) + "".join(name.rjust(width) for name in names))
    for test, outcomes in rows:
        lines.append(test.ljust(test_width) + "".join(o.rjust(width) for o in outcomes))
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Target:
    """Where one run points the suite, with whose credentials, in which repositories."""

    url: str
    user: str
    password: str
    namespace: str
    crossmount: str


def suite_env(target: Target, ca_cert: Path, report_dir: Path) -> dict[str, str]:
    """The suite's whole configuration (its README lists the variables)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    return inherited | {
        "OCI_ROOT_URL": target.url,
        "OCI_NAMESPACE": target.namespace,
        "OCI_CROSSMOUNT_NAMESPACE": target.crossmount,
        "OCI_USERNAME": target.user,
        "OCI_PASSWORD": target.password,
        "OCI_TEST_PULL": "1",
        "OCI_TEST_PUSH": "1",
        "OCI_TEST_CONTENT_DISCOVERY": "1",
        "OCI_TEST_CONTENT_MANAGEMENT": "1",
        "OCI_AUTOMATIC_CROSSMOUNT": "0",  # docker-registry 2.8 never mounts without `from`
        "OCI_HIDE_SKIPPED_WORKFLOWS": "0",
        "OCI_DEBUG": os.environ.get("OCI_DEBUG", "0"),
        "OCI_REPORT_DIR": str(report_dir),
        "SSL_CERT_FILE": str(ca_cert),
    }


def run_suite(binary: Path, target: Target, ca_cert: Path, directory: Path) -> dict[str, str]:
    """Run the suite once; its output goes to directory/suite.log, its reports to report/."""
    report_dir = directory / "report"
    report_dir.mkdir(parents=True)
    with (directory / "suite.log").open("wb") as log:
        try:
            subprocess.run(
                [str(binary), "-ginkgo.no-color"],
                env=suite_env(target, ca_cert, report_dir),
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=SUITE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SuiteError(f"the suite ran over {SUITE_TIMEOUT:.0f} s ({log.name})") from None
    junit = report_dir / "junit.xml"
    if not junit.exists():
        raise SuiteError(f"the suite wrote no {junit} (its output: {directory / 'suite.log'})")
    return parse_junit(junit.read_text())


def write_users(directory: Path, users: Mapping[str, str], groups: str = "") -> Path:
    """htpasswd (bcrypt, which docker-registry also reads) and groups files in directory."""
    lines = [f"{user}:{hash_password(password, cost=5)}\n" for user, password in users.items()]
    (directory / "htpasswd").write_text("".join(lines))
    (directory / "groups").write_text(groups)
    return directory / "htpasswd"


def wait_ready(
    url: str, authorization: str, ca_cert: Path, process: subprocess.Popen[bytes]
) -> None:
    """Until an authenticated ping answers 200 (the upstream is reachable through it)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SuiteError(f"regproxy exited with {process.returncode}")
        try:
            if https_status(f"{url}/v2/", authorization, ca_cert, timeout=2) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SuiteError(f"regproxy did not answer {url}/v2/ in {START_TIMEOUT:.0f} s")


@contextmanager
def regproxy(
    directory: Path, upstream: str, tls: TlsFiles, extra: str, authorization: str
) -> Iterator[str]:
    """`regproxy serve` on a free loopback port in front of upstream; yields its URL."""
    port = free_port()
    config = directory / "regproxy.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nupstream: {upstream}\nhtpasswd: htpasswd\ngroups: groups\n"
        f"tls:\n  cert: {tls.server_cert}\n  key: {tls.server_key}\n" + extra
    )
    process = start(
        [sys.executable, "-m", "proxy", "serve", "-c", str(config)],
        directory / "regproxy.log",
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's proxy
        cwd=directory,
    )
    try:
        url = f"https://127.0.0.1:{port}"
        wait_ready(url, authorization, tls.ca_cert, process)
        yield url
    finally:
        stop(process, 30)  # the workers too: the parent relays SIGTERM


@dataclass(frozen=True)
class Plan:
    """One run: the registry directly, or through regproxy (with the `acl` file when set)."""

    name: str
    user: str
    groups: str
    namespace: str
    direct: bool = False
    acl: Path | None = None


PLANS = (
    Plan("direct", "conformance", "", "conformance", direct=True),
    Plan("default", "conformance", "pusher: conformance\n", "conformance"),
    Plan("namespaces", "alice", "", "alice/conformance", acl=NAMESPACES_ACL),
)


def run_plan(
    plan: Plan, binary: Path, tls: TlsFiles, directory: Path, workers: int | None
) -> dict[str, str]:
    """A fresh registry (and regproxy in front of it), the suite against it, the results."""
    directory.mkdir(parents=True)
    password = secrets.token_urlsafe(12)
    htpasswd = write_users(directory, {plan.user: password}, plan.groups)
    names = (f"{plan.namespace}/repo", f"{plan.namespace}/other")
    if plan.direct:
        with Registry(directory / "registry", tls=tls, htpasswd=htpasswd) as registry:
            target = Target(registry.url, plan.user, password, *names)
            return run_suite(binary, target, tls.ca_cert, directory)
    # Behind regproxy the registry is plain HTTP without auth, as in the recipe.
    extra = (f"acl: {plan.acl}\n" if plan.acl else "") + (
        f"workers: {workers}\n" if workers else ""
    )
    authorization = basic_header(plan.user, password)
    with (
        Registry(directory / "registry") as registry,
        regproxy(directory, registry.url, tls, extra, authorization) as url,
    ):
        target = Target(url, plan.user, password, *names)
        return run_suite(binary, target, tls.ca_cert, directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, help="regproxy workers (default: its own)")
    parser.add_argument("--workdir", type=Path, help="keep every run's files here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir even on success")
    args = parser.parse_args(argv)
    binary = find_binary(os.environ, ROOT)
    if isinstance(binary, str):
        print(binary, file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="regproxy-conformance-"))
    tls = make_tls(workdir / "tls")
    runs: dict[str, dict[str, str]] = {}
    try:
        for plan in PLANS:
            print(f"conformance: {plan.name} ...", file=sys.stderr, flush=True)
            runs[plan.name] = run_plan(plan, binary, tls, workdir / plan.name, args.workers)
    except (SuiteError, RuntimeError, OSError) as exc:
        print(f"conformance: {exc}\n(files kept in {workdir})", file=sys.stderr)
        return 2
    print(render(runs))
    direct, *_ = runs.values()
    failing = regressions(direct, {k: v for k, v in runs.items() if k != "direct"})
    if failing:
        print(f"\nFAIL: {len(failing)} test(s) pass directly but not through regproxy:")
        for run, test, outcome in failing:
            print(f"  {run}: {test}: {outcome}")
        print(f"(reports and logs in {workdir})")
        return 1
    print("\nOK: every test that passes directly passes through regproxy")
    if args.keep or args.workdir:
        print(f"(reports and logs in {workdir})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
