"""The Grafana dashboard and the alert rules in deploy/ query only metrics the endpoint exports
(tests/serve_app checks the export), and between them watch every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.support.metric_names import families, series_names

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
NAME = re.compile(r"\bray_routeray_[a-z_]+\b")


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def family_of(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series) if series not in families() else series


def test_every_query_names_an_exported_series():
    queries = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    used = {name for query in queries for name in NAME.findall(query)}
    assert used, "no routeray metric in any query"
    assert used <= series_names(), sorted(used - series_names())
    # A histogram is queried through its buckets or sum/count, never by its bare family name.
    histograms = {name for name, kind in families().items() if kind == "histogram"}
    assert not used & histograms


def test_the_dashboard_shows_every_metric():
    shown = {family_of(name) for query in dashboard_queries() for name in NAME.findall(query)}
    assert shown == set(families()), sorted(set(families()) - shown)


def test_alert_rules_are_complete():
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
    # Both backends' failures page someone.
    paged = " ".join(rule["expr"] for rule in rules if rule["labels"]["severity"] == "page")
    assert 'backend="strong"' in paged and 'backend="weak"' in paged
