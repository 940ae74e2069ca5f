"""The worker pods' shape from the chart's values, like every other pod's: worker.affinity,
podAnnotations, podSecurityContext and containerSecurityContext reach the operator as
worker_* settings (variables of the ConfigMap), and from there its worker Deployments. The
defaults are the operator's own, so they leave the ConfigMap (and its checksum) as it was.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from support.chart_manifests import config
from support.chart_rendering import CHART, Renderer

from downloader.cluster import planning
from downloader.config.settings import Settings
from downloader.operator.handlers import Reconciler

pytestmark = pytest.mark.chart

SHAPE_SETTINGS = {
    "affinity": "DOWNLOADER_WORKER_AFFINITY",
    "podAnnotations": "DOWNLOADER_WORKER_POD_ANNOTATIONS",
    "podSecurityContext": "DOWNLOADER_WORKER_POD_SECURITY_CONTEXT",
    "containerSecurityContext": "DOWNLOADER_WORKER_CONTAINER_SECURITY_CONTEXT",
}
WORKERS = {"matchLabels": {"app.kubernetes.io/component": "worker"}}
ONE_PER_NODE = {"topologyKey": "kubernetes.io/hostname", "labelSelector": WORKERS}
SPREAD = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": ONE_PER_NODE}]
    }
}


class _Cluster:
    """Records the Deployment the operator creates."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create_deployment(self, body: dict[str, Any]) -> None:
        self.created.append(body)


def worker_deployment(settings: Settings) -> dict[str, Any]:
    """The worker Deployment the operator creates for a new aggregation under `settings`."""
    cluster = _Cluster()
    reconciler = Reconciler(settings, db=None, cluster=cluster)  # type: ignore[arg-type]
    metadata = {"name": "shop", "namespace": "ns", "uid": "u-1"}
    owner = {"apiVersion": planning.API_VERSION, "kind": planning.KIND, "metadata": metadata}
    spec = planning.Spec.from_dict({"id": "shop"})
    asyncio.run(reconciler._apply_deployment(spec, owner, None, 1))  # type: ignore[arg-type]
    (created,) = cluster.created
    return created


def test_the_chart_worker_shape_defaults_are_the_operator_settings_defaults() -> None:
    worker = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["worker"]
    s = Settings()
    assert worker["affinity"] == s.worker_affinity == {}
    assert worker["podAnnotations"] == s.worker_pod_annotations == {}
    assert (
        worker["podSecurityContext"] == s.worker_pod_security_context == planning.WORKER_POD_SECURITY_CONTEXT
    )
    container = planning.WORKER_CONTAINER_SECURITY_CONTEXT
    assert worker["containerSecurityContext"] == s.worker_container_security_context == container


def test_the_defaults_pass_none_of_the_shape_settings(render: Renderer) -> None:
    assert not set(SHAPE_SETTINGS.values()) & config(render()).keys()
    # Values equal to the defaults (given with --set, typed differently) pass none either.
    docs = render("--set", "worker.podSecurityContext.runAsUser=10001")
    assert not set(SHAPE_SETTINGS.values()) & config(docs).keys()


def test_worker_shape_values_reach_the_operator_and_shape_its_pods(
    render: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "affinity": SPREAD,
        "podAnnotations": {"team": "downloads"},
        "podSecurityContext": {"runAsUser": 2000, "runAsGroup": 2000, "fsGroup": 2000},
        "containerSecurityContext": {"capabilities": None, "privileged": False},
    }
    cfg = config(render(values={"worker": values}))
    # Maps are merged with the chart's defaults (null drops a key), and passed whole.
    pod_security = {**planning.WORKER_POD_SECURITY_CONTEXT, **values["podSecurityContext"]}
    container_security = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
    }
    passed = {key: json.loads(cfg[name]) for key, name in SHAPE_SETTINGS.items()}
    assert passed == {
        "affinity": SPREAD,
        "podAnnotations": {"team": "downloads"},
        "podSecurityContext": pod_security,
        "containerSecurityContext": container_security,
    }
    # The operator reads them as settings (its environment is this ConfigMap)...
    for name in SHAPE_SETTINGS.values():
        monkeypatch.setenv(name, cfg[name])
    deployment = worker_deployment(Settings())
    # ...and its worker Deployment is valid Kubernetes with them.
    kubernetes_validate.validate(deployment, "1.37.0", strict=True)
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {"team": "downloads", planning.ID_ANNOTATION: "shop"}
    pod = template["spec"]
    assert pod["affinity"] == SPREAD
    assert pod["securityContext"] == pod_security
    assert pod["containers"][0]["securityContext"] == container_security


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"worker": {"affinity": []}}, "/worker/affinity"),
        ({"worker": {"podAnnotations": {"a": 1}}}, "/worker/podAnnotations"),
        ({"worker": {"podSecurityContext": "root"}}, "/worker/podSecurityContext"),
        ({"worker": {"containerSecurityContext": ["privileged"]}}, "/worker/containerSecurityContext"),
    ],
)
def test_values_schema_types_the_worker_shape(render: Renderer, values: dict[str, Any], where: str) -> None:
    err = render.fails(values=values)
    assert "values don't meet the specifications of the schema" in err, err
    assert where in err, err
