"""The real node (tests/node): a kubelet v1.37.2 with containerd 2.4.2 and runc beside kwok.

Pods here are host-network, tolerate the node's taint, select it by label and run the images
of tests/images/build.sh that the fixture loaded into containerd (`imagePullPolicy: Never`:
no registry is reachable). Their logs come back through the API server from the kubelet.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from support.node import TAINT_EFFECT, TAINT_KEY, TAINT_VALUE, RealNode
from testbed.controlplane import ControlPlane, free_port, wait_until

from downloader.version import __version__

pytestmark = [pytest.mark.k8s, pytest.mark.node]


def pod(node: RealNode, name: str, image: str, args: list[str], **container: Any) -> dict[str, Any]:
    """A pod for the real node: host network, its toleration and selector, a local image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "hostNetwork": True,
            "nodeSelector": node.node_selector,
            "tolerations": node.tolerations,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "args": args, **container}
            ],
        },
    }


def pod_json(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    return found


def finished(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The pod once it has Succeeded or Failed."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: (
            (p := pod_json(cluster, namespace, name))["status"].get("phase") in ("Succeeded", "Failed") and p
        ),
        timeout=120,
        what=f"pod {name} to finish",
    )


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def test_node_is_ready_and_real(real_node: RealNode, cluster: ControlPlane) -> None:
    node = real_node.node()
    assert condition(node, "Ready") == "True", node["status"]
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"] == "containerd://2.4.2"
    assert info["kubeletVersion"] == "v1.37.2"
    assert node["metadata"]["labels"]["downloader.test/node"] == "real"
    taint = {"key": TAINT_KEY, "value": TAINT_VALUE, "effect": TAINT_EFFECT}
    # Other taints come and go (node.kubernetes.io/not-ready has no value): ours must be there.
    taints = node["spec"].get("taints", [])
    assert taint in [{k: t.get(k) for k in ("key", "value", "effect")} for t in taints], taints
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    # the images the fixture loaded, as the kubelet reports them (from containerd's CRI)
    names = {name for image in node["status"].get("images", []) for name in image.get("names", [])}
    assert set(real_node.images) == {"api", "worker"}
    for ref in real_node.images.values():
        assert ref in names, (ref, sorted(names))
    # kwok's fake node is still there, untouched
    assert "kwok-node" in cluster.kubectl("get", "nodes", "-o", "name")


def test_a_pod_runs_downloader_version(real_node: RealNode, cluster: ControlPlane, namespace: str) -> None:
    worker = real_node.images["worker"]
    start = time.monotonic()
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(pod(real_node, "version", worker, ["version"]))
    )
    done = finished(cluster, namespace, "version")
    seconds = time.monotonic() - start
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["spec"]["nodeName"] == real_node.name
    assert done["status"]["podIP"] == "127.0.0.1"
    (state,) = done["status"]["containerStatuses"]
    assert state["state"]["terminated"]["exitCode"] == 0
    assert state["imageID"], state
    # through the API server, from the kubelet's own log files
    assert cluster.kubectl("logs", "-n", namespace, "version").strip() == f"Downloader Version {__version__}"
    print(f"\nreal node: pod `downloader version` applied -> Succeeded in {seconds:.1f}s")


def test_an_api_pod_becomes_ready_and_serves(
    real_node: RealNode, cluster: ControlPlane, namespace: str, redis_server: Any
) -> None:
    api = real_node.images["api"]
    port = free_port()
    spec = pod(
        real_node,
        "api",
        api,
        ["api", "--host", "127.0.0.1", "--port", str(port)],
        env=[{"name": "DOWNLOADER_REDIS_URL", "value": redis_server.url}, *real_node.pod_env],
        # /readyz answers 200 only when Redis answers: Ready means the pod reached the test's Redis
        readinessProbe={
            "httpGet": {"host": "127.0.0.1", "port": port, "path": "/readyz"},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
    )
    start = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(spec))
    ready = wait_until(
        lambda: condition(p := pod_json(cluster, namespace, "api"), "Ready") == "True" and p,
        timeout=120,
        what="pod api Ready",
    )
    seconds = time.monotonic() - start
    assert ready["spec"]["nodeName"] == real_node.name
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
        body = json.loads(response.read())
    assert body == {"status": "ok"}
    env = {e["name"]: e["value"] for e in ready["spec"]["containers"][0]["env"]}
    assert env["KUBERNETES_SERVICE_PORT"] == str(cluster.port)
    # a graceful delete: SIGTERM reaches the API, which stops serving
    start_delete = time.monotonic()
    cluster.kubectl("delete", "pod", "-n", namespace, "api", "--wait=true", timeout=90)
    deleted = time.monotonic() - start_delete
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    print(f"\nreal node: pod `downloader api` applied -> Ready in {seconds:.1f}s, deleted in {deleted:.1f}s")


def test_an_image_tagged_in_containerd_runs(
    real_node: RealNode, cluster: ControlPlane, namespace: str
) -> None:
    """tag_image() makes a second reference the kubelet runs without pulling (rollout tests);
    an untagged reference is never pulled."""
    worker = real_node.images["worker"]
    new = real_node.tag_image(worker, "localhost/downloader-worker:rollout-test")
    assert new in real_node.image_refs()
    for name, image in (("tagged", new), ("untagged", "localhost/downloader-worker:never-tagged")):
        spec = pod(real_node, name, image, ["version"])
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(spec))
    done = finished(cluster, namespace, "tagged")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert cluster.kubectl("logs", "-n", namespace, "tagged").strip() == f"Downloader Version {__version__}"
    # the same image (containerd reports its first reference as the status' `image`)
    (status,) = done["status"]["containerStatuses"]
    assert status["imageID"].startswith("sha256:"), status
    waiting = wait_until(
        lambda: (
            pod_json(cluster, namespace, "untagged")["status"]
            .get("containerStatuses", [{}])[0]
            .get("state", {})
            .get("waiting", {})
            .get("reason")
        ),
        timeout=60,
        what="pod untagged to wait",
    )
    assert waiting == "ErrImageNeverPull"
