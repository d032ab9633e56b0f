"""The shipped Grafana dashboard and Prometheus alerts (deploy/), held to what regproxy exports:
promtool checks the rules and runs their unit tests; a real Prometheus scrapes a real
`regproxy serve` and evaluates every expression of both; the README's metrics table lists
exactly the metrics `/metrics` declares."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import USERS, Served, basic, scrape, until
from tests.prometheus_server import running_prometheus, scrape_config
from tests.promql import exported_names, is_exported, metric_names
from tests.redis_server import debian_binary

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "regproxy.json"
ALERTS = ROOT / "deploy" / "prometheus" / "regproxy-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "regproxy-alerts.test.yml"
README = ROOT / "README.md"
JOB = "regproxy"
# Series Prometheus makes itself for every target it scrapes.
PROMETHEUS_OWN = frozenset(("up",))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [debian_binary("promtool"), *args], cwd=ALERTS.parent, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable, as Grafana would send it
    for the job `JOB` and every instance: its variables replaced, a variable's
    `label_values(SELECTOR, LABEL)` as the series query Grafana makes of it."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]
    for variable in dashboard["templating"]["list"]:
        query = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["definition"])
        assert query is not None, variable["definition"]
        found.append((f"variable {variable['name']}", f"count by ({query[2]}) ({query[1]})"))
    values = {"__rate_interval": "1m", "job": JOB, "instance": ".*"}

    def substitute(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"a dashboard variable the test does not know: {name}"
        return values[name]

    return [(where, re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, expr)) for where, expr in found]


def readme_metrics() -> list[tuple[str, frozenset[str]]]:
    """The first column of the table in "### Metrics and health": each metric's name and the
    label names it is written with (`name{a,b}`)."""
    section = README.read_text().split("### Metrics and health\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_:]+)(?:\{([a-z_,]*)\})?` \|", section, re.M)
    return [(name, frozenset(filter(None, labels.split(",")))) for name, labels in rows]


def label_names(exposition: str) -> dict[str, frozenset[str]]:
    """The label names of each family's samples (a histogram's `le` left out), by the name
    its TYPE line gives it."""
    found: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(exposition):
        name = family.name + "_total" if family.type == "counter" else family.name
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[name] = found.get(name, frozenset()) | (set(sample.labels) - {"le"})
    return found


# -- the files alone ---------------------------------------------------------------------------


def test_the_dashboard_is_importable() -> None:
    """What Grafana's import needs: a schema version, the datasource as an input every panel
    and target uses, ids and titles."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"] == source for p in panels)
    assert all(t["datasource"] == source for p in panels for t in p["targets"])
    assert all(v["datasource"] == source for v in dashboard["templating"]["list"])


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_has_unit_tests_firing_and_quiet_and_they_pass() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never quiet"
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_readme_lists_the_panels_their_queries_and_the_alerts() -> None:
    """ "Dashboards and alerts": each panel with its queries (the variables' selector left out),
    in the dashboard's order, and each alert."""
    section = README.read_text().split("### Dashboards and alerts\n", 1)[1].split("\n### ", 1)[0]
    listed = [
        (title, re.findall(r"`([^`]+)`", queries))
        for title, queries in re.findall(r"^- \*\*(.+?)\*\*: (.+)$", section, re.M)
    ]
    dashboard = json.loads(DASHBOARD.read_text())
    selector = 'job=~"$job", instance=~"$instance"'
    shipped = [
        (
            panel["title"],
            [
                t["expr"].replace("{" + selector + "}", "").replace(selector + ", ", "")
                for t in panel["targets"]
            ],
        )
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    ]
    assert listed == shipped
    alerts = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert alerts == [rule["alert"] for rule in alert_rules()]


# -- against a real regproxy -------------------------------------------------------------------

METRICS = "metrics:\n  listen: 127.0.0.1:{free_port}\n"


def metrics_port(served: Served) -> int:
    config = (served.directory / "regproxy.yaml").read_text()
    found = re.search(r"metrics:\n  listen: 127.0.0.1:(\d+)", config)
    assert found is not None
    return int(found[1])


def declared(exposition: str) -> set[str]:
    """regproxy's own families in a `/metrics` text (not the `_created` time that
    prometheus-client adds beside each counter and histogram with one worker)."""
    families = exported_names(exposition)
    companions = {
        name.removesuffix("_total") + "_created"
        for name, kind in families.items()
        if kind in ("counter", "histogram")
    }
    return {name for name in families if name.startswith("regproxy_")} - companions


@pytest.mark.parametrize("served", [METRICS], indirect=True)
async def test_prometheus_evaluates_every_expression_against_regproxy(served: Served) -> None:
    """Each dashboard query and alert expression is valid PromQL to a real Prometheus scraping
    a real `regproxy serve`, and names only metrics that regproxy's `/metrics` declares; the
    rules evaluate without error and, regproxy being healthy, none fires or is pending."""
    port = metrics_port(served)
    families = exported_names((await scrape(port))[1])
    prometheus_yml = scrape_config(JOB, [f"127.0.0.1:{port}"], [ALERTS])
    async with running_prometheus(served.directory / "prometheus", prometheus_yml) as prometheus:

        async def scraped() -> bool:
            query = f'up{{job="{JOB}"}} == 1 and on() regproxy_upstream_up == 1'
            return bool((await prometheus.api("query", query=query))["result"])

        await until(scraped, 60, "prometheus never scraped regproxy")
        expressions = dashboard_expressions() + [
            (f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()
        ]
        for where, expression in expressions:
            await prometheus.api("query", query=expression)  # asserts it is valid
            unknown = {
                name
                for name in metric_names(expression)
                if not is_exported(name, families) and name not in PROMETHEUS_OWN
            }
            assert not unknown, f"{where} names what regproxy does not export: {unknown}"

        async def evaluated() -> list[dict[str, Any]] | None:
            groups = (await prometheus.api("rules", type="alert"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if all(r["health"] != "unknown" for r in rules) else None

        await until(evaluated, 30, "prometheus never evaluated the rules")
        rules = await evaluated()
        assert rules is not None
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        assert (await prometheus.api("alerts"))["alerts"] == []


# One manifest pull an hour: the second is refused, and the rate-limit counter has a value.
BUDGET = "rate_limits:\n  users:\n    manifest_pulls: {limit: 1, per: 1h}\n"


@pytest.mark.parametrize(
    "served", [METRICS + BUDGET, "workers: 2\n" + METRICS + BUDGET], indirect=True
)
async def test_the_readme_lists_exactly_the_exported_metrics(served: Served) -> None:
    """Both ways: every `regproxy_` family `/metrics` declares is in the README's table with
    the labels it has there, and every metric in the table is declared, with one worker (the
    process' own registry) and with several (prometheus-client's multiprocess mode shows a
    labelled metric once it has a value: requests, one refused over its budget, give theirs
    one)."""
    documented = dict(readme_metrics())
    assert len(documented) == len(readme_metrics()), "a metric listed twice"
    statuses = []
    for _ in range(2):
        headers = {"Authorization": basic("pull", USERS["pull"])}
        async with served.session.get(served.url + "/v2/a/manifests/1", headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 429]
    exposition = (await scrape(metrics_port(served)))[1]
    exported = declared(exposition)
    assert sorted(exported - set(documented)) == [], "exported, not in the README"
    assert sorted(set(documented) - exported) == [], "in the README, not exported"
    labelled = label_names(exposition)
    assert {name: labelled[name] for name in exported if name in labelled} == {
        name: documented[name] for name in exported if name in labelled
    }, "labels not as the README writes them"
