"""The chart's Grafana dashboard asks only for metrics the service exports.

Every PromQL expression (panels and template variables) is reduced to the metric names it
selects; each must be one of downloader/observability/metrics.py's registry (with the _total, _bucket,
_count, _sum and _info forms of its families) or an explicitly allowed kube-state-metrics one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from support.chart_manifests import find
from support.chart_rendering import CHART, Renderer

from downloader.cluster import planning
from downloader.observability import metrics

pytestmark = pytest.mark.chart

DASHBOARD = CHART / "dashboards" / "downloader.json"
#: Not ours, and fine to need: kube-state-metrics runs wherever prometheus-operator does.
KUBE_STATE_METRICS = frozenset({"kube_pod_container_status_restarts_total"})
#: Labels Prometheus adds to every target (ServiceMonitor/PodMonitor), usable in `by (...)`.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "job", "instance", "service", "endpoint", "le"})
PROMQL_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                          "or", "unless", "offset", "inf", "nan"})  # fmt: skip
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",),
            "gauge": ("",)}  # fmt: skip


def exported() -> tuple[set[str], set[str]]:
    """(metric names, label names) of everything the registry exports."""
    names: set[str] = set()
    labels: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    # Labelled families have no samples until first used: take their declared label names.
    for collector in list(metrics.REGISTRY._collector_to_names):
        labels.update(getattr(collector, "_labelnames", ()))
    labels.add("aggregation")  # the per-aggregation gauges, empty until Redis has a backlog
    return names, labels


def selected_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\boffset\s+-?[0-9smhdwy]+", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers, 1e-9 included
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if not rest.startswith("(") and match.group() not in PROMQL_WORDS:
            found.add(match.group())
    return found


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            # Grafana's label_values(metric, label): the metric is PromQL, the label is not.
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["query"]))
    return exprs


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = ('sum by (le, backend) (rate(a_bucket{x="y{z}", q=~"b.*"}[5m])) / clamp_min(b_total offset 5m, '
            "1e-9) * on (pod) group_left c_info + 2")  # fmt: skip
    assert selected_metrics(expr) == {"a_bucket", "b_total", "c_info"}
    assert grouping_labels(expr) == {"le", "backend"}


def test_every_expression_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    names, _ = exported()
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    unknown = {m: e for e in exprs for m in selected_metrics(e) if m not in names | KUBE_STATE_METRICS}
    assert not unknown, unknown
    used = {m for e in exprs for m in selected_metrics(e)}
    assert used & KUBE_STATE_METRICS == KUBE_STATE_METRICS, "drop what the dashboard no longer uses"


def test_every_grouping_label_exists(dashboard: dict[str, Any]) -> None:
    _, labels = exported()
    for expr in expressions(dashboard):
        assert grouping_labels(expr) <= labels | TARGET_LABELS, expr


def test_the_required_panels_are_there(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(expressions(dashboard))
    for needed in ("downloader_jobs_succeeded_total", "downloader_jobs_failed_total",
                   "histogram_quantile(0.99, sum by (le) (rate(downloader_download_duration_seconds_bucket",
                   "max by (aggregation) (downloader_queue_depth", "max by (aggregation) (downloader_operator_workers",
                   "downloader_callbacks_delivered_total", "downloader_callbacks_failed_total",
                   "downloader_callback_duration_seconds_bucket"):  # fmt: skip
        assert needed in exprs, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_the_configmap_carries_the_dashboard_file(render: Renderer, dashboard: dict[str, Any]) -> None:
    docs = render(
        values={"monitoring": {"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}}}}
    )
    cm = find(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["downloader.json"]) == dashboard


# --- what feeds it: every process is scraped ------------------------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + In expressions) against pod labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def test_notifier_operator_and_worker_pods_serve_metrics_where_the_podmonitor_looks(render: Renderer) -> None:
    docs = render(values={"monitoring": {"podMonitor": {"enabled": True, "interval": "15s"}},
                          "notifier": {"extraEnv": [{"name": "X", "value": "1"}]}})  # fmt: skip
    pm = find(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ns"]}
    worker = planning.deployment(planning.Spec.from_dict({"id": "shop"}), "ns", 1,
                                 planning.WorkerPod(image="w:1"))["spec"]["template"]  # fmt: skip
    pods = {name: d["spec"]["template"] for name in ("-notifier", "-operator")
            for d in [find(docs, "Deployment", name)]}  # fmt: skip
    pods["worker"] = worker
    for name, template in pods.items():
        assert _matches(pm["spec"]["selector"], template["metadata"]["labels"]), name
        container = template["spec"]["containers"][0]
        assert {"name": "DOWNLOADER_METRICS_PORT", "value": "9100"} in container["env"], name
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"], name
    assert {"name": "X", "value": "1"} in pods["-notifier"]["spec"]["containers"][0]["env"]
    api = find(docs, "Deployment", "-api")["spec"]["template"]["metadata"]["labels"]
    assert not _matches(pm["spec"]["selector"], api)  # the ServiceMonitor scrapes the API


def test_podmonitor_is_off_by_default_and_the_liveness_port_cannot_take_the_metrics_port(
    render: Renderer,
) -> None:
    assert not [d for d in render() if d["kind"] == "PodMonitor"]
    assert "livenessPort" in render.fails(values={"operator": {"livenessPort": 9100}})


def test_the_worker_networkpolicy_lets_only_the_scrape_in_when_the_podmonitor_is_on(render: Renderer) -> None:
    assert find(render(), "NetworkPolicy")["spec"]["ingress"] == []
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    for scrape_from, expected in (([], {}), ([peer], {"from": [peer]})):
        values = {"monitoring": {"podMonitor": {"enabled": True, "scrapeFrom": scrape_from}}}
        np = find(render(values=values), "NetworkPolicy")
        assert np["spec"]["ingress"] == [{"ports": [{"port": 9100, "protocol": "TCP"}], **expected}]
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
        kubernetes_validate.validate(np, "1.37.0", strict=True)
