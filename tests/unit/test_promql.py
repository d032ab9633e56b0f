"""The PromQL reading the dashboard and alert tests rely on (tests/promql.py)."""

from __future__ import annotations

import pytest

from tests.promql import exported_names, is_exported, metric_names


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("up", {"up"}),
        ('regproxy_store_up{job="a", instance=~"b.*"} == 0', {"regproxy_store_up"}),
        (
            'sum by (action, status) (rate(regproxy_requests_total{status=~"5.."}[5m]))',
            {"regproxy_requests_total"},
        ),
        ("sum(rate(a_total[1m])) without (le, job) / ignoring(x) b", {"a_total", "b"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(lat_seconds_bucket[5m] offset 1h)))",
            {"lat_seconds_bucket"},
        ),
        ("min by (instance) (expiry_seconds) - time() < 14 * 86400", {"expiry_seconds"}),
        ("a * on (instance) group_left (version) b", {"a", "b"}),
        ("a * on (instance) group_left b", {"a", "b"}),
        ('{__name__="by_name", by="sum"}', {"by_name"}),
        ('label_replace(m, "dst", "$1", "src", "(sum|rate)")', {"m"}),
        (
            'count_values("v", build_info) > bool 1e3 and c unless d or inf',
            {"build_info", "c", "d"},
        ),
        ("vector(1) + scalar(s)", {"s"}),
        ("max_over_time(deriv(g[5m])[1h:5m]) @ end()", {"g"}),
        ("topk(3, sum by (budget) (increase(limited_total[1h])))", {"limited_total"}),
        ("ns:rule:rate5m > 0", {"ns:rule:rate5m"}),
    ],
)
def test_metric_names_of_an_expression(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


EXPOSITION = """\
# HELP regproxy_requests_total Requests
# TYPE regproxy_requests_total counter
regproxy_requests_total{action="pull",status="200"} 3.0
# TYPE regproxy_requests_created gauge
# TYPE regproxy_upstream_latency_seconds histogram
regproxy_upstream_latency_seconds_bucket{le="0.1"} 1.0
# TYPE regproxy_store_up gauge
# TYPE rpc_seconds summary
"""


@pytest.mark.parametrize(
    ("name", "exported"),
    [
        ("regproxy_requests_total", True),
        ("regproxy_requests", False),
        ("regproxy_requests_total_total", False),
        ("regproxy_upstream_latency_seconds_bucket", True),
        ("regproxy_upstream_latency_seconds_sum", True),
        ("regproxy_upstream_latency_seconds_count", True),
        ("regproxy_upstream_latency_seconds", False),
        ("regproxy_store_up", True),
        ("regproxy_store_up_count", False),
        ("rpc_seconds_count", True),
        ("rpc_seconds_bucket", False),
        ("regproxy_rate_limited_total", False),
    ],
)
def test_a_name_is_exported_by_its_family(name: str, exported: bool) -> None:
    assert is_exported(name, exported_names(EXPOSITION)) is exported
