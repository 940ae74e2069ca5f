"""Smoke tests of the test control plane itself (tests/controlplane + tools/testbed/controlplane.py)."""

from __future__ import annotations

import json

import pytest
from testbed.controlplane import CRDS_DIR, NODE_NAME, ControlPlane, wait_until

pytestmark = pytest.mark.k8s


def deployment(name: str, replicas: int) -> dict[str, object]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/downloader:test"}]},
            },
        },
    }


def test_version_is_the_real_one(cluster: ControlPlane) -> None:
    status, body = cluster.get("/version")
    assert status == 200, body
    assert body["gitVersion"] == "v1.37.2"
    assert (body["major"], body["minor"]) == ("1", "37")
    out = cluster.kubectl("version", "-o", "json")
    assert json.loads(out)["serverVersion"]["gitVersion"] == "v1.37.2"


def test_kubectl_shows_the_fake_node(cluster: ControlPlane) -> None:
    out = cluster.kubectl("get", "nodes", "-o", "wide")
    assert NODE_NAME in out
    line = next(line for line in out.splitlines() if line.startswith(NODE_NAME))
    assert " Ready " in f" {line} "


def test_deployment_gets_ready_replicas(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(deployment("web", 2)))

    def ready() -> bool:
        status = cluster.kubectl_json("-n", namespace, "get", "deployment", "web").get("status", {})
        return status.get("readyReplicas") == 2

    wait_until(ready, timeout=90, what="deployment web readyReplicas == 2")
    pods = cluster.kubectl_json("-n", namespace, "get", "pods", "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["status"]["phase"] == "Running"
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == "True"


def test_garbage_collector_deletes_owned_objects(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner", "--from-literal=a=b")
    owner = cluster.kubectl_json("-n", namespace, "get", "configmap", "owner")
    owned = deployment("owned", 1)
    owned["metadata"]["ownerReferences"] = [  # type: ignore[index]
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(owned))
    wait_until(
        lambda: cluster.kubectl("-n", namespace, "get", "replicasets", "-l", "app=owned", "-o", "name"),
        timeout=60,
        what="the owned Deployment's ReplicaSet",
    )

    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")

    def gone() -> bool:
        done = cluster.kubectl_run("-n", namespace, "get", "deployment", "owned")
        return done.returncode != 0 and "NotFound" in done.stderr

    wait_until(gone, timeout=90, what="the garbage collector to delete the owned Deployment")
    wait_until(
        lambda: not cluster.kubectl("-n", namespace, "get", "replicasets,pods", "-o", "name").strip(),
        timeout=90,
        what="its ReplicaSet and pods to go too",
    )


def test_apiserver_restart_keeps_objects(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "survivor", "--from-literal=k=v")
    before = cluster.kubectl_json("-n", namespace, "get", "configmap", "survivor")
    old_pid = cluster.procs["apiserver"].pid

    cluster.restart_apiserver()

    assert cluster.procs["apiserver"].pid != old_pid
    after = cluster.kubectl_json("-n", namespace, "get", "configmap", "survivor")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["data"] == {"k": "v"}
    # the other components reconnect: a new Deployment still becomes ready
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(deployment("after-restart", 1)))
    wait_until(
        lambda: (
            cluster.kubectl_json("-n", namespace, "get", "deployment", "after-restart")
            .get("status", {})
            .get("readyReplicas")
            == 1
        ),
        timeout=120,
        what="a Deployment created after the restart to become ready",
    )


def test_crds_from_the_repository_are_established(cluster: ControlPlane) -> None:
    files = sorted(CRDS_DIR.glob("*.y*ml")) if CRDS_DIR.is_dir() else []
    expected = [f for f in files if "kind: CustomResourceDefinition" in f.read_text()]
    assert len(cluster.crds) >= len(expected), (cluster.crds, expected)
    for name in cluster.crds:
        crd = cluster.kubectl_json("get", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", name
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        assert plural in cluster.kubectl("api-resources", f"--api-group={group}", "-o", "name")
