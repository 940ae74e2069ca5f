"""Where the operator's worker pods run: host network, nodeSelector, tolerations, metrics port.

From the worker_* settings (as the chart's ConfigMap gives them) through the
operator's `_apply_deployment` to the pod spec of `planning.deployment`, with plain values.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from downloader.cluster import planning
from downloader.config.settings import Settings, load
from downloader.errors import ConfigurationError
from downloader.operator.handlers import Reconciler

TAINT = {"key": "downloader.test/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE = {"downloader.test/node": "real"}


def pod_spec(pod: planning.WorkerPod) -> dict[str, Any]:
    spec = planning.Spec.from_dict({"id": "shop.example.com", "limit": 4})
    template: dict[str, Any] = planning.deployment(spec, "ns", 1, pod)["spec"]["template"]
    return dict(template["spec"])


def test_defaults_keep_the_pod_network_any_node_and_the_metrics_port() -> None:
    spec = pod_spec(planning.WorkerPod(image="img"))
    assert not {"hostNetwork", "dnsPolicy", "nodeSelector", "tolerations"} & spec.keys()
    container = spec["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert {"name": "DOWNLOADER_METRICS_PORT", "value": "9100"} in container["env"]


def test_host_network_node_selector_and_tolerations_reach_the_pod_spec() -> None:
    spec = pod_spec(
        planning.WorkerPod(image="img", host_network=True, node_selector=NODE, tolerations=[TAINT])
    )
    assert spec["hostNetwork"] is True
    # Cluster names still resolve first, as in the chart's other host-network pods.
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == NODE
    assert spec["tolerations"] == [TAINT]


def test_metrics_port_zero_leaves_no_container_port_to_collide_on_the_host_network() -> None:
    container = pod_spec(planning.WorkerPod(image="img", host_network=True, metrics_port=0))["containers"][0]
    assert "ports" not in container
    assert "DOWNLOADER_METRICS_PORT" not in [e["name"] for e in container["env"]]


def test_another_metrics_port_is_served_and_declared() -> None:
    container = pod_spec(planning.WorkerPod(image="img", metrics_port=9300))["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9300, "protocol": "TCP"}]
    assert {"name": "DOWNLOADER_METRICS_PORT", "value": "9300"} in container["env"]


def test_the_settings_default_to_what_the_pods_had_before() -> None:
    s = Settings()
    assert (s.worker_metrics_port, s.worker_host_network, s.worker_node_selector, s.worker_tolerations) == (
        planning.WorkerPod(image="i").metrics_port, False, {}, []
    )  # fmt: skip


def test_the_settings_parse_the_chart_configmap_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # As configmap.yaml writes them: toJson of the values, "true", the port as a string.
    monkeypatch.setenv("DOWNLOADER_WORKER_HOST_NETWORK", "true")
    monkeypatch.setenv("DOWNLOADER_WORKER_NODE_SELECTOR", json.dumps(NODE))
    monkeypatch.setenv("DOWNLOADER_WORKER_TOLERATIONS", json.dumps([TAINT, {"operator": "Exists",
                                                                            "tolerationSeconds": 30}]))  # fmt: skip
    monkeypatch.setenv("DOWNLOADER_WORKER_METRICS_PORT", "0")
    s = load()
    assert s.worker_host_network is True
    assert s.worker_node_selector == NODE
    assert s.worker_tolerations == [TAINT, {"operator": "Exists", "tolerationSeconds": 30}]
    assert s.worker_metrics_port == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DOWNLOADER_WORKER_NODE_SELECTOR", '["not", "an", "object"]'),
        ("DOWNLOADER_WORKER_TOLERATIONS", '{"key": "not a list"}'),
        ("DOWNLOADER_WORKER_TOLERATIONS", "[{"),
        ("DOWNLOADER_WORKER_METRICS_PORT", "70000"),
    ],
)
def test_bad_values_fail_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        load()


def wanted_deployment(settings: Settings) -> dict[str, Any]:
    """The worker Deployment the operator writes for an Aggregation under `settings` (what it
    sends to the API server, decided without one)."""
    reconciler = Reconciler(settings, db=None, cluster=None)  # type: ignore[arg-type]
    spec = planning.Spec.from_dict({"id": "shop.example.com", "limit": 4})
    return reconciler._wanted_deployment(spec, 1)


def test_the_operator_applies_the_settings_to_the_worker_deployment() -> None:
    settings = Settings(worker_host_network=True, worker_node_selector=NODE, worker_tolerations=[TAINT],
                        worker_metrics_port=0)  # fmt: skip
    pod = wanted_deployment(settings)["spec"]["template"]["spec"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert pod["nodeSelector"] == NODE and pod["tolerations"] == [TAINT]
    assert "ports" not in pod["containers"][0]


# --- the pod's shape: affinity, annotations, security contexts ---------------------------------

SSD_NODES = {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]
}
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": SSD_NODES}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 2000, "fsGroup": 2000}
CONTAINER_SECURITY = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}


def test_the_shape_settings_default_to_what_the_pods_had_before() -> None:
    s, pod = Settings(), planning.WorkerPod(image="i")
    assert s.worker_affinity == pod.affinity == {}
    assert s.worker_pod_annotations == pod.pod_annotations == {}
    assert s.worker_pod_security_context == pod.pod_security_context == planning.WORKER_POD_SECURITY_CONTEXT
    container = planning.WORKER_CONTAINER_SECURITY_CONTEXT
    assert s.worker_container_security_context == pod.container_security_context == container
    assert "affinity" not in pod_spec(pod)


def test_the_shape_settings_parse_the_chart_configmap_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOADER_WORKER_AFFINITY", json.dumps(AFFINITY))
    monkeypatch.setenv("DOWNLOADER_WORKER_POD_ANNOTATIONS", json.dumps({"team": "downloads"}))
    monkeypatch.setenv("DOWNLOADER_WORKER_POD_SECURITY_CONTEXT", json.dumps(POD_SECURITY))
    monkeypatch.setenv("DOWNLOADER_WORKER_CONTAINER_SECURITY_CONTEXT", json.dumps(CONTAINER_SECURITY))
    s = load()
    assert s.worker_affinity == AFFINITY
    assert s.worker_pod_annotations == {"team": "downloads"}
    assert s.worker_pod_security_context == POD_SECURITY
    assert s.worker_container_security_context == CONTAINER_SECURITY


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DOWNLOADER_WORKER_AFFINITY", "[]"),
        ("DOWNLOADER_WORKER_POD_ANNOTATIONS", '{"a": {"b": 1}}'),
        ("DOWNLOADER_WORKER_POD_SECURITY_CONTEXT", '"root"'),
        ("DOWNLOADER_WORKER_CONTAINER_SECURITY_CONTEXT", "{"),
    ],
)
def test_bad_shape_values_fail_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        load()


def test_the_operator_applies_the_shape_settings_to_the_worker_deployment() -> None:
    settings = Settings(
        worker_affinity=AFFINITY,
        worker_pod_annotations={"team": "downloads"},
        worker_pod_security_context=POD_SECURITY,
        worker_container_security_context=CONTAINER_SECURITY,
    )
    template = wanted_deployment(settings)["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "team": "downloads",
        planning.ID_ANNOTATION: "shop.example.com",
    }
    pod = template["spec"]
    assert pod["affinity"] == AFFINITY
    assert pod["securityContext"] == POD_SECURITY
    assert pod["containers"][0]["securityContext"] == CONTAINER_SECURITY
