"""The Grafana dashboard and the alert rules only query metrics a deployed exporter emits."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metric_catalogue import known_metrics  # noqa: E402  pylint: disable=wrong-import-position

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "roles/monitoring/files/dashboards/platform-overview.json"
RULES = ROOT / "roles/monitoring/templates/etc/prometheus/rules/enclave.rules.yml.j2"

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
            "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (label matchers, strings, ranges, grouping and
    function names removed). Grafana's $variables are treated as plain words."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\'[^\']*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)
    # Durations (offset 1h) and numbers (1e9, 0.95) are not names.
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+|ms|[smhdwy])*(?![A-Za-z0-9_:])", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    walk(dashboard["panels"])
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found.append((annotation["name"], annotation["expr"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    text = re.sub(r"\[\[.*?\]\]", "1", RULES.read_text())
    rules = []
    for block in re.split(r"\n\s*- alert: ", text)[1:]:
        name = block.split("\n", 1)[0].strip()
        expr = re.search(r"\n\s*expr: (?:>-\n)?(.*?)\n\s*for:", block, re.S).group(1)
        rules.append((name, expr))
    return rules


@pytest.mark.parametrize("expr,expected", [
    ('sum by (model) (rate(vllm:generation_tokens_total{model=~"$model"}[$__rate_interval]))',
     {"vllm:generation_tokens_total"}),
    ("histogram_quantile(0.95, sum by (le, model) (rate(a_bucket[5m])) or sum by (le) (rate(b_bucket[5m])))",
     {"a_bucket", "b_bucket"}),
    ("time() - max by (host) (x_seconds) > 900 and on (host) (sum by (host) (y) > 0)", {"x_seconds", "y"}),
    ('node_filesystem_avail_bytes{mountpoint=~`/|/srv`} offset 1h < 0.1', {"node_filesystem_avail_bytes"}),
    ("up{job!=\"vllm\"} == 0", {"up"}),
    ("count by (host) (gpu_info offset 1h) > 1e9 * 0.5", {"gpu_info"}),
])
def test_metric_names_are_extracted(expr, expected):
    assert metric_names(expr) == expected


def test_an_unknown_metric_is_caught():
    assert metric_names("rate(vllm:no_such_metric_total[5m])") - set(known_metrics()) == {"vllm:no_such_metric_total"}


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "enclave-llm-overview"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model"}
    ids = []

    def walk(panels):
        for panel in panels:
            ids.append(panel["id"])
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}"
                assert panel["targets"], panel["title"]
                assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("title,expr", dashboard_queries())
def test_every_dashboard_query_names_only_emitted_metrics(title, expr):
    names = metric_names(expr)
    assert names, f"{title}: query names no metric: {expr}"
    unknown = names - set(known_metrics())
    assert not unknown, f"{title}: {sorted(unknown)} is emitted by no deployed exporter"


def test_dashboard_covers_the_platform_overview():
    sources = {known_metrics()[name] for _title, expr in dashboard_queries() for name in metric_names(expr)}
    assert {"vllm", "haproxy", "gateway", "nvidia_gpu_exporter", "audit_shipping (node_exporter textfile)",
            "node_exporter", "prometheus"} <= sources
    titles = " ".join(title.lower() for title, _expr in dashboard_queries())
    for topic in ("requests", "tokens per second", "time to first token", "errors", "gpu memory",
                  "gpu temperature", "gpu utilization", "audit"):
        assert topic in titles, topic


@pytest.mark.parametrize("alert,expr", rule_expressions())
def test_every_alert_rule_names_only_emitted_metrics(alert, expr):
    names = metric_names(expr)
    assert names, alert
    assert not names - set(known_metrics()), f"{alert}: {sorted(names - set(known_metrics()))}"
