"""deploy/grafana/bidopt-dashboard.json cannot drift from the code: every metric its queries name is
one the code exports (``BIDDER_METRICS``, ``OPTIMIZER_METRICS``, with Ray's prefix and a histogram's
series), every label it selects or groups by is one of that metric's own labels (or one Ray adds),
and every metric the code exports has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bidopt.jobs.optimizer_metrics import OPTIMIZER_METRICS, exported_names
from bidopt.metrics import BIDDER_METRICS, PROMETHEUS_PREFIX

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "bidopt-dashboard.json"
ALL_METRICS = {**BIDDER_METRICS, **OPTIMIZER_METRICS}
KNOWN = exported_names(ALL_METRICS)
# Labels Ray's metrics agent adds to every application metric, and a histogram bucket's bound.
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "JobId", "le"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return out


def metric_names(query: str) -> list[str]:
    """Every word of ``query`` that names a bidopt metric, prefixed or not."""
    return re.findall(r"\b\w*bidopt_\w+", query)


def base_name(series: str) -> str:
    """The name given to ray.util.metrics behind an exported series (``ray_x_bucket`` -> ``x``)."""
    base = series.removeprefix(PROMETHEUS_PREFIX)
    return base if base in ALL_METRICS else re.sub(r"_(bucket|count|sum)$", "", base)


def test_the_dashboard_has_the_three_rows_and_panels_under_each():
    panels = load()["panels"]
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    assert [panels[i]["title"] for i in rows] == ["Bidder", "Notices", "Optimizer"]
    for start, end in zip(rows, [*rows[1:], len(panels)]):
        assert end - start > 1, panels[start]["title"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        if p["type"] != "row":
            assert p["title"] and p["description"] and p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}"  # the data source picked on import


def test_every_metric_a_query_names_is_one_the_code_exports_and_each_has_a_panel():
    used = {name for q in queries(load()) for name in metric_names(q)}
    assert used <= KNOWN, sorted(used - KNOWN)
    assert {base_name(n) for n in used} == set(ALL_METRICS)


def test_every_label_a_query_uses_is_one_of_its_metrics_labels():
    for q in queries(load()):
        allowed = RAY_LABELS.union(*(ALL_METRICS[base_name(n)].labels for n in metric_names(q)))
        selected = re.findall(r"(\w+)\s*(?:=~|!=|!~|=)\s*\"", q)
        grouped = [w for g in re.findall(r"by \(([^)]*)\)", q) for w in re.split(r"[,\s]+", g) if w]
        label_values = re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", q)
        for label in (*selected, *grouped, *label_values):
            assert label in allowed, (label, q)


@pytest.mark.parametrize(
    "query",
    [
        "sum(rate(ray_bidopt_bidder_bid_total[5m]))",  # misspelt
        "sum(rate(bidopt_bidder_bids_total[5m]))",  # without Ray's prefix: Prometheus never has it
        "histogram_quantile(0.9, rate(ray_bidopt_bidder_requests_total_bucket[5m]))",  # a counter's bucket
    ],
)
def test_a_name_the_code_does_not_export_is_caught(query):
    assert not set(metric_names(query)) <= KNOWN
