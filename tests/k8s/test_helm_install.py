"""`helm install downloader ./charts/downloader` into the real test control plane: every object,
the operator's RBAC (checked verb by verb with `kubectl auth can-i`), Ready pods (kwok), helm
test objects, an upgrade that rolls exactly the Deployments whose config changed, and an
uninstall that leaves only the CRD."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.kubetools import CHART, helm, wait_for

pytestmark = pytest.mark.k8s

RELEASE = "downloader"

#: What the operator does through the API (k8s_operator/, downloader/cluster/kube.py) and what
#: kopf does for it; each must be allowed to its ServiceAccount, in the release namespace.
OPERATOR_NEEDS = [
    ("get", "aggregations.downloader.io"),
    ("list", "aggregations.downloader.io"),
    ("watch", "aggregations.downloader.io"),
    ("patch", "aggregations.downloader.io"),
    ("create", "aggregations.downloader.io"),
    ("patch", "aggregations.downloader.io/status"),
    ("get", "deployments.apps"),
    ("create", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("create", "events"),
    ("list", "pods"),  # the pod-deletion-cost of worker pods, before a scale-down
    ("patch", "pods"),
]
#: Cluster-wide: kopf discovers the CRD it serves.
OPERATOR_NEEDS_CLUSTER = [("list", "customresourcedefinitions.apiextensions.k8s.io"),
                          ("watch", "customresourcedefinitions.apiextensions.k8s.io")]  # fmt: skip
#: Least privilege: none of these.
OPERATOR_MUST_NOT = [("get", "secrets"), ("delete", "deployments.apps"), ("create", "pods"), ("delete", "pods"),
                     ("delete", "aggregations.downloader.io")]  # fmt: skip


def objects(cluster: Any, namespace: str, kinds: str) -> dict[str, dict[str, Any]]:
    listed = json.loads(cluster.kubectl("-n", namespace, "get", kinds, "-l", f"app.kubernetes.io/instance={RELEASE}",
                                        "-o", "json"))  # fmt: skip
    return {f"{i['kind']}/{i['metadata']['name']}": i for i in listed["items"]}


def can_i(
    cluster: Any, namespace: str, sa: str, verb: str, resource: str, cluster_wide: bool = False
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{namespace}:{sa}"]
    args += ["--all-namespaces"] if cluster_wide else ["-n", namespace]
    out = cluster.kubectl_run(*args)
    return str(out.stdout).strip() == "yes"


def test_install_upgrade_and_uninstall(cluster: Any, namespace: str, tmp_path: Path) -> None:
    started = time.monotonic()
    helm(cluster, tmp_path, "install", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout", "240s")
    install_seconds = time.monotonic() - started
    sys.stderr.write(f"\nhelm install --wait took {install_seconds:.1f}s\n")

    found = objects(cluster, namespace, "deployments,statefulsets,services,configmaps,secrets,serviceaccounts,"
                                        "roles,rolebindings")  # fmt: skip
    kinds = sorted({name.split("/")[0] for name in found})
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "ServiceAccount", "Role",
            "RoleBinding"} <= set(kinds), kinds  # fmt: skip
    deployments = {n: o for n, o in found.items() if n.startswith("Deployment/")}
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in deployments.values()}
    assert components == {"api", "notifier", "operator"}, deployments.keys()
    for name, deployment in deployments.items():
        assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"], name
    redis = next(o for n, o in found.items() if n.startswith("StatefulSet/"))
    assert redis["status"].get("readyReplicas") == 1

    operator_sa = next(o["metadata"]["name"] for n, o in found.items()
                       if n.startswith("ServiceAccount/") and o["metadata"]["labels"].get(
                           "app.kubernetes.io/component") == "operator")  # fmt: skip
    for verb, resource in OPERATOR_NEEDS:
        assert can_i(cluster, namespace, operator_sa, verb, resource), f"operator cannot {verb} {resource}"
    for verb, resource in OPERATOR_NEEDS_CLUSTER:
        assert can_i(cluster, namespace, operator_sa, verb, resource, cluster_wide=True), (verb, resource)
    for verb, resource in OPERATOR_MUST_NOT:
        assert not can_i(cluster, namespace, operator_sa, verb, resource), f"operator may {verb} {resource}"

    hooks = helm(cluster, tmp_path, "get", "hooks", RELEASE, "-n", namespace)
    assert "helm.sh/hook: test" in hooks and "/healthz" in hooks

    def checksums() -> dict[str, str]:
        now = objects(cluster, namespace, "deployments")
        return {n: o["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/config", "")
                for n, o in now.items()}  # fmt: skip

    before = checksums()
    redis_generation = redis["metadata"]["generation"]
    helm(cluster, tmp_path, "upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values",
         "--set", "config.logLevel=DEBUG", "--wait", "--timeout", "240s")  # fmt: skip
    after = checksums()
    assert after.keys() == before.keys()
    assert all(after[n] and after[n] != before[n] for n in after), (
        before,
        after,
    )  # every pod reads the config
    redis_after = next(o for n, o in objects(cluster, namespace, "statefulsets").items())
    assert redis_after["metadata"]["generation"] == redis_generation  # Redis does not read it: not rolled

    helm(cluster, tmp_path, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
    left = wait_for(lambda: not objects(cluster, namespace, "all,configmaps,secrets,serviceaccounts,roles,"
                                                          "rolebindings") or None, 60, "nothing left")  # fmt: skip
    assert left is True
    cluster_wide = json.loads(cluster.kubectl("get", "clusterroles,clusterrolebindings", "-l",
                                              f"app.kubernetes.io/instance={RELEASE}", "-o", "json"))  # fmt: skip
    assert cluster_wide["items"] == []
    crd = cluster.kubectl("get", "crd", "aggregations.downloader.io", "-o", "name").strip()
    assert crd == "customresourcedefinition.apiextensions.k8s.io/aggregations.downloader.io"
