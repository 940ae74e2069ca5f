"""The chart on a single node without a pod network, Service proxy, registry or DNS.

Every pod on the host network (each component's hostNetwork), the ports that become node
ports settable (api.containerPort, the metricsPorts, operator.livenessPort), worker pods
placed by the operator's worker_* settings, extraEnv last (KUBERNETES_SERVICE_HOST
without kube-proxy), a claim bound to a static PersistentVolume, and a helm test run from the
API's own image at a URL of one's choosing. The defaults render as before: the other chart
tests hold them, and these check that none of the new keys appear.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from support.chart_manifests import config, find, kinds, of_kind, pod_specs
from support.chart_rendering import CHART, Renderer

from downloader.cluster import planning
from downloader.config.settings import Settings

pytestmark = pytest.mark.chart

TAINT = {"key": "downloader.test/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE = {"downloader.test/node": "real"}
PYTHON_GET = ["python", "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)"]
K8S_ENV = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
           {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]  # fmt: skip


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


#: The flags a test on one real node passes to `helm install` (API on 18000, metrics on
#: 19101/19102, liveness on 18081, no worker metrics), as given in the report.
REAL_NODE_FLAGS = [
    "--set", "api.hostNetwork=true,notifier.hostNetwork=true,operator.hostNetwork=true,"
             "worker.hostNetwork=true,tests.hostNetwork=true",
    "--set", "api.replicaCount=1,api.containerPort=18000",
    "--set", "notifier.metricsPort=19101,operator.metricsPort=19102,operator.livenessPort=18081",
    "--set", "worker.metricsPort=0",
    "--set-json", f"worker.nodeSelector={_json(NODE)}",
    "--set-json", f"worker.tolerations={_json([TAINT])}",
    *[arg for part in ("api", "notifier", "operator", "tests")
      for arg in ("--set-json", f"{part}.nodeSelector={_json(NODE)}",
                  "--set-json", f"{part}.tolerations={_json([TAINT])}")],
    "--set", "api.image.repository=localhost/downloader-api,api.image.pullPolicy=Never",
    "--set-string", "api.image.tag=0123abc",
    "--set", "worker.image.repository=localhost/downloader-worker,worker.image.pullPolicy=Never",
    "--set-string", "worker.image.tag=0123abc",
    "--set", "redis.external.url=redis://127.0.0.1:16379/0",
    "--set", "storage.filesystem.persistentVolumeClaim.enabled=true,"
             "storage.filesystem.persistentVolumeClaim.storageClass=-,"
             "storage.filesystem.persistentVolumeClaim.volumeName=downloader-files-pv,"
             "storage.filesystem.persistentVolumeClaim.size=1Gi",
    "--set", "tests.image.repository=localhost/downloader-api,tests.image.pullPolicy=Never",
    "--set-string", "tests.image.tag=0123abc",
    "--set", "tests.url=http://127.0.0.1:18000/healthz,tests.resources.limits.memory=128Mi",
    "--set-json", f"tests.command={_json(PYTHON_GET)}",
    "--set-json", f"api.extraEnv={_json(K8S_ENV)}",
    "--set-json", f"operator.extraEnv={_json(K8S_ENV)}",
]  # fmt: skip

NEW_POD_FIELDS = ("hostNetwork", "dnsPolicy")
NEW_WORKER_SETTINGS = ("DOWNLOADER_WORKER_METRICS_PORT", "DOWNLOADER_WORKER_HOST_NETWORK",
                       "DOWNLOADER_WORKER_NODE_SELECTOR", "DOWNLOADER_WORKER_TOLERATIONS")  # fmt: skip


def container(docs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return dict(find(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0])


def env(c: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["name"], e.get("value", "")) for e in c.get("env", [])]


# --- Defaults ------------------------------------------------------------------------------


def test_defaults_add_none_of_the_new_fields(render: Renderer) -> None:
    docs = render(values={"storage": {"filesystem": {"persistentVolumeClaim": {"enabled": True}}}})
    for name, spec in pod_specs(docs):
        assert not set(NEW_POD_FIELDS) & spec.keys(), name
    assert not set(NEW_WORKER_SETTINGS) & config(docs).keys()
    assert "storageClassName" not in find(docs, "PersistentVolumeClaim")["spec"]
    assert "volumeName" not in find(docs, "PersistentVolumeClaim")["spec"]
    api = container(docs, "-api")
    assert api["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert "env" not in api
    assert ("DOWNLOADER_METRICS_PORT", "9100") in env(container(docs, "-notifier"))
    operator = container(docs, "-operator")
    assert operator["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"},
                                 {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]  # fmt: skip
    test = find(docs, "Pod", "-test-connection")["spec"]
    assert test["containers"][0]["name"] == "wget"
    assert test["containers"][0]["image"] == "busybox:1.37"
    assert test["containers"][0]["command"] == ["wget"]
    assert test["containers"][0]["args"] == ["-q", "-O-", "-T", "10", "http://r-downloader-api:80/healthz"]
    assert test["containers"][0]["resources"] == {"requests": {"cpu": "10m", "memory": "16Mi"},
                                                  "limits": {"memory": "32Mi"}}  # fmt: skip


def test_the_chart_worker_defaults_are_the_operator_settings_defaults() -> None:
    # configmap.yaml writes DOWNLOADER_WORKER_METRICS_PORT only when it is not 9100.
    worker = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["worker"]
    s = Settings()
    pod = planning.WorkerPod(image="i")
    assert worker["metricsPort"] == s.worker_metrics_port == pod.metrics_port == 9100
    assert (worker["hostNetwork"], worker["nodeSelector"], worker["tolerations"]) == (
        s.worker_host_network, s.worker_node_selector, s.worker_tolerations
    )  # fmt: skip


# --- hostNetwork -----------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["api", "notifier", "operator", "tests"])
def test_host_network_is_per_component(render: Renderer, component: str) -> None:
    docs = render(values={component: {"hostNetwork": True}})
    on = {name for name, spec in pod_specs(docs) if spec.get("hostNetwork")}
    pod = {"tests": "r-downloader-test-connection"}.get(component, f"r-downloader-{component}")
    assert on == {pod}
    spec = dict(pod_specs(docs))[pod]
    # Cluster names still resolve first, as in a pod on the pod network.
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not set(NEW_WORKER_SETTINGS) & config(docs).keys()


@pytest.mark.parametrize("component", ["api", "notifier"])
def test_on_the_host_network_a_rollout_replaces_pods_without_a_surge(
    render: Renderer, component: str
) -> None:
    """A surge pod would need the host ports its predecessor holds: Pending, and the rollout
    (a `helm upgrade --wait`) never ends. The user's own strategy wins; off the host network
    Kubernetes' default stays."""
    name = f"Deployment/r-downloader-{component}"

    def strategy(values: dict[str, Any]) -> Any:
        return {f"{d['kind']}/{d['metadata']['name']}": d for d in render(values=values)}[name]["spec"].get(
            "strategy"
        )

    assert strategy({}) is None
    assert strategy({component: {"hostNetwork": True}}) == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}  # fmt: skip
    own = {"type": "Recreate"}
    assert strategy({component: {"hostNetwork": True, "strategy": own}}) == own


# --- Ports -----------------------------------------------------------------------------------


def test_api_container_port_moves_the_listener_and_the_service_and_probes_follow(render: Renderer) -> None:
    docs = render(values={"api": {"containerPort": 18000}})
    api = container(docs, "-api")
    assert api["args"] == ["api", "--host", "0.0.0.0", "--port", "18000"]
    assert api["ports"] == [{"name": "http", "containerPort": 18000, "protocol": "TCP"}]
    assert api["livenessProbe"]["httpGet"]["port"] == api["readinessProbe"]["httpGet"]["port"] == "http"
    service = find(docs, "Service", "-api")["spec"]["ports"][0]
    assert (service["port"], service["targetPort"]) == (80, "http")


def test_metrics_ports_are_per_component(render: Renderer) -> None:
    docs = render(values={"notifier": {"metricsPort": 19101}, "operator": {"metricsPort": 19102}})
    for suffix, port in (("-notifier", 19101), ("-operator", 19102)):
        c = container(docs, suffix)
        assert ("DOWNLOADER_METRICS_PORT", str(port)) in env(c), suffix
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"], suffix


def test_metrics_port_zero_turns_the_endpoint_and_the_container_port_off(render: Renderer) -> None:
    # Explicitly 0, so that a DOWNLOADER_METRICS_PORT in config.env cannot open it anyway.
    docs = render(values={"notifier": {"metricsPort": 0}, "operator": {"metricsPort": 0, "livenessPort": 0},
                          "config": {"env": {"DOWNLOADER_METRICS_PORT": "9100"}}})  # fmt: skip
    for suffix in ("-notifier", "-operator"):
        c = container(docs, suffix)
        assert ("DOWNLOADER_METRICS_PORT", "0") in env(c), suffix
        assert "ports" not in c, suffix
    assert "livenessProbe" not in container(docs, "-operator")
    only_metrics = container(render(values={"operator": {"livenessPort": 0}}), "-operator")
    assert only_metrics["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]


def test_operator_liveness_port_is_settable_but_not_the_metrics_port(render: Renderer) -> None:
    docs = render(values={"operator": {"livenessPort": 18081}})
    assert config(docs)["DOWNLOADER_OPERATOR_LIVENESS_PORT"] == "18081"
    health = {"name": "health", "containerPort": 18081, "protocol": "TCP"}
    assert health in container(docs, "-operator")["ports"]
    assert "livenessPort" in render.fails(values={"operator": {"livenessPort": 19102, "metricsPort": 19102}})
    # 9100 is free once the metrics moved.
    render(values={"operator": {"livenessPort": 9100, "metricsPort": 19102}})


# --- Worker pods -------------------------------------------------------------------------------


def test_worker_values_reach_the_operator_and_shape_its_pods(
    render: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(values={"worker": {"hostNetwork": True, "nodeSelector": NODE, "tolerations": [TAINT],
                                     "metricsPort": 0}})  # fmt: skip
    cfg = config(docs)
    assert cfg["DOWNLOADER_WORKER_HOST_NETWORK"] == "true"
    assert json.loads(cfg["DOWNLOADER_WORKER_NODE_SELECTOR"]) == NODE
    assert json.loads(cfg["DOWNLOADER_WORKER_TOLERATIONS"]) == [TAINT]
    assert cfg["DOWNLOADER_WORKER_METRICS_PORT"] == "0"
    # The operator reads them as settings (its environment is this ConfigMap)...
    for name in NEW_WORKER_SETTINGS:
        monkeypatch.setenv(name, cfg[name])
    s = Settings()
    pod = planning.WorkerPod(image=s.worker_image, metrics_port=s.worker_metrics_port,
                             host_network=s.worker_host_network, node_selector=s.worker_node_selector,
                             tolerations=s.worker_tolerations)  # fmt: skip
    # ...and its worker Deployment is valid Kubernetes with them.
    deployment = planning.deployment(planning.Spec.from_dict({"id": "shop"}), "ns", 1, pod)
    kubernetes_validate.validate(deployment, "1.37.0", strict=True)
    spec = deployment["spec"]["template"]["spec"]
    assert (spec["hostNetwork"], spec["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert spec["nodeSelector"] == NODE and spec["tolerations"] == [TAINT]
    assert "ports" not in spec["containers"][0]


def test_worker_metrics_port_moves_the_networkpolicy_scrape_rule(render: Renderer) -> None:
    on = {"monitoring": {"podMonitor": {"enabled": True}}}
    np = find(render(values={**on, "worker": {"metricsPort": 9300}}), "NetworkPolicy")
    assert np["spec"]["ingress"] == [{"ports": [{"port": 9300, "protocol": "TCP"}]}]
    cfg = config(render(values={"worker": {"metricsPort": 9300}}))
    assert cfg["DOWNLOADER_WORKER_METRICS_PORT"] == "9300"
    # No metrics port: nothing to let in.
    assert find(render(values={**on, "worker": {"metricsPort": 0}}), "NetworkPolicy")["spec"]["ingress"] == []


# --- Environment, storage, Redis ------------------------------------------------------------------


@pytest.mark.parametrize("component", ["api", "notifier", "operator"])
def test_extra_env_comes_last_so_the_users_value_wins(render: Renderer, component: str) -> None:
    extra = [*K8S_ENV, {"name": "DOWNLOADER_METRICS_PORT", "value": "19200"}]
    c = container(render(values={component: {"extraEnv": extra}}), f"-{component}")
    assert c["env"][-3:] == extra
    # envFrom (the ConfigMap) loses to env; among env entries the kubelet keeps the last.
    assert c["envFrom"]


def test_the_files_claim_can_bind_a_static_volume(render: Renderer) -> None:
    pvc_values = {"enabled": True, "storageClass": "-", "volumeName": "downloader-files-pv",
                  "accessModes": ["ReadWriteOnce"], "size": "1Gi"}  # fmt: skip
    docs = render(values={"storage": {"filesystem": {"persistentVolumeClaim": pvc_values}}})
    pvc = find(docs, "PersistentVolumeClaim", "-files")
    # "" (not absent): no default class is filled in, only a class-less volume can bind.
    assert pvc["spec"]["storageClassName"] == ""
    assert pvc["spec"]["volumeName"] == "downloader-files-pv"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert config(docs)["DOWNLOADER_WORKER_STORAGE_CLAIM"] == "r-downloader-files"
    named = find(render(values={"storage": {"filesystem": {"persistentVolumeClaim": {
        "enabled": True, "storageClass": "nfs"}}}}), "PersistentVolumeClaim")  # fmt: skip
    assert named["spec"]["storageClassName"] == "nfs"


# --- helm test -------------------------------------------------------------------------------------


def test_helm_test_runs_any_image_and_command_against_any_url(render: Renderer) -> None:
    docs = render(values={"tests": {"image": {"repository": "localhost/downloader-api", "tag": "",
                                              "pullPolicy": "Never"},
                                    "url": "http://127.0.0.1:18000/healthz", "command": PYTHON_GET,
                                    "resources": {"limits": {"memory": "128Mi"}},
                                    "hostNetwork": True, "nodeSelector": NODE, "tolerations": [TAINT]}})  # fmt: skip
    pod = find(docs, "Pod", "-test-connection")["spec"]
    c = pod["containers"][0]
    assert c["image"] == "localhost/downloader-api:0.2.0"  # "" is the appVersion, as for the API
    assert c["imagePullPolicy"] == "Never"
    assert c["command"] == PYTHON_GET
    assert c["args"] == ["http://127.0.0.1:18000/healthz"]
    assert c["resources"] == {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}}
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert pod["nodeSelector"] == NODE and pod["tolerations"] == [TAINT]
    (wget,) = find(render(values={"tests": {"url": "http://api.example/healthz"}}), "Pod")["spec"][
        "containers"
    ]
    assert wget["args"] == ["-q", "-O-", "-T", "10", "http://api.example/healthz"]


# --- All of it, as the real-node test installs it ------------------------------------------------


def test_the_real_node_flags_render_valid_kubernetes_with_everything_in_place(render: Renderer) -> None:
    docs = render(*REAL_NODE_FLAGS)
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, errors
    assert "StatefulSet" not in kinds(docs)  # external Redis
    specs = dict(pod_specs(docs))
    assert set(specs) == {"r-downloader-api", "r-downloader-notifier", "r-downloader-operator",
                          "r-downloader-test-connection"}  # fmt: skip
    for name, spec in specs.items():
        assert (spec["hostNetwork"], spec["dnsPolicy"]) == (True, "ClusterFirstWithHostNet"), name
        assert spec["nodeSelector"] == NODE and spec["tolerations"] == [TAINT], name
        assert spec["containers"][0]["imagePullPolicy"] == "Never", name
    # No two containers of the node ask for the same port.
    ports = [p["containerPort"] for spec in specs.values() for p in spec["containers"][0].get("ports", [])]
    assert sorted(ports) == [18000, 18081, 19101, 19102]
    assert find(docs, "Deployment", "-api")["spec"]["replicas"] == 1
    assert specs["r-downloader-api"]["containers"][0]["image"] == "localhost/downloader-api:0123abc"
    for name in ("r-downloader-api", "r-downloader-operator"):
        assert specs[name]["containers"][0]["env"][-2:] == K8S_ENV, name
    cfg = config(docs)
    assert cfg["DOWNLOADER_REDIS_URL"] == "redis://127.0.0.1:16379/0"
    assert cfg["DOWNLOADER_WORKER_IMAGE"] == "localhost/downloader-worker:0123abc"
    assert cfg["DOWNLOADER_WORKER_IMAGE_PULL_POLICY"] == "Never"
    assert cfg["DOWNLOADER_WORKER_METRICS_PORT"] == "0"
    assert cfg["DOWNLOADER_WORKER_HOST_NETWORK"] == "true"
    assert json.loads(cfg["DOWNLOADER_WORKER_NODE_SELECTOR"]) == NODE
    assert json.loads(cfg["DOWNLOADER_WORKER_TOLERATIONS"]) == [TAINT]
    pvc = find(docs, "PersistentVolumeClaim")["spec"]
    assert (pvc["storageClassName"], pvc["volumeName"]) == ("", "downloader-files-pv")
    test = specs["r-downloader-test-connection"]["containers"][0]
    assert test["image"] == "localhost/downloader-api:0123abc"
    assert test["command"] + test["args"] == [*PYTHON_GET, "http://127.0.0.1:18000/healthz"]
    assert len(of_kind(docs, "Deployment")) == 3


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"api": {"hostNetwork": "yes"}}, "/api/hostNetwork"),
        ({"api": {"containerPort": 0}}, "/api/containerPort"),
        ({"notifier": {"metricsPort": "9100"}}, "/notifier/metricsPort"),
        ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
        ({"worker": {"metricsPort": -1}}, "/worker/metricsPort"),
        ({"worker": {"nodeSelector": {"a": 1}}}, "/worker/nodeSelector"),
        ({"worker": {"tolerations": {"key": "k"}}}, "/worker/tolerations"),
        ({"tests": {"command": "wget"}}, "/tests/command"),
        ({"tests": {"url": "127.0.0.1:8000"}}, "/tests/url"),
        ({"storage": {"filesystem": {"persistentVolumeClaim": {"volumeName": 1}}}}, "volumeName"),
    ],
)
def test_values_schema_types_the_new_values(render: Renderer, values: dict[str, Any], where: str) -> None:
    err = render.fails(values=values)
    assert "values don't meet the specifications of the schema" in err, err
    assert where in err, err
