"""The chart as a whole: lint, render, the CRD copy, Kubernetes 1.37 schemas, values.schema.json."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.chart_manifests import kinds
from support.chart_rendering import CHART, CI_VALUES, REPO, Renderer

pytestmark = pytest.mark.chart

KUBE_VERSION = "1.37.0"

#: Every optional object on at once (the ServiceMonitor too, whose CRD is not in 1.37's schemas).
ALL_ON: dict[str, Any] = {
    "api": {"ingress": {"enabled": True, "tls": [{"secretName": "tls", "hosts": ["downloader.example.com"]}]},
            "autoscaling": {"enabled": True}, "podDisruptionBudget": {"enabled": True}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
    "storage": {"filesystem": {"persistentVolumeClaim": {"enabled": True}}},
    "redis": {"persistence": {"enabled": True}},
    "secrets": {"s3": {"accessKeyId": "AK", "secretAccessKey": "SK"}, "kafka": {"username": "u", "password": "p"},
                "callbackSigningKey": "k"},
    "kafka": {"bootstrapServers": "kafka:9092"},
}  # fmt: skip


def test_helm_is_v3_22_0_with_its_version_stamped(helm: Path) -> None:
    out = subprocess.run([str(helm), "version", "--template", "{{.Version}} {{.GitTreeState}}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out == "v3.22.0 clean"


@pytest.mark.parametrize("values", [None, CI_VALUES], ids=["defaults", "ci-values"])
def test_lint_strict_passes(helm: Path, values: Path | None) -> None:
    cmd = [str(helm), "lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_holds_the_expected_objects(render: Renderer) -> None:
    assert kinds(render()) == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Deployment", "Deployment",
        "NetworkPolicy", "Pod", "Role", "Role", "RoleBinding", "RoleBinding", "Secret", "Service",
        "Service", "Service", "ServiceAccount", "ServiceAccount", "ServiceAccount", "StatefulSet",
    ])  # fmt: skip


def test_ci_values_render_the_optional_objects(render: Renderer) -> None:
    got = kinds(render("-f", str(CI_VALUES)))
    for kind in ("Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert kind in got
    assert got.count("ConfigMap") == 2  # settings + Grafana dashboard


def test_crd_copy_is_identical_to_the_source() -> None:
    source = REPO / "crds" / "aggregations.downloader.io.yaml"
    copy = CHART / "crds" / "aggregations.downloader.io.yaml"
    assert copy.read_bytes() == source.read_bytes(), f"cp {source} {copy}"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        p.name for p in source.parent.glob("*.yaml")
    )


def _validate(docs: list[dict[str, Any]]) -> list[str]:
    """Validate each document against the Kubernetes 1.37 schemas (strict: no unknown fields).
    Returns the kinds that have no schema there (custom resources)."""
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a missing test dependency fails, never skips
        pytest.fail("kubernetes-validate is missing: .venv/bin/pip install kubernetes-validate==1.37.0",
                    pytrace=False)  # fmt: skip
    unknown = []
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)
    return unknown


@pytest.mark.parametrize("variant", ["defaults", "ci-values", "all-on", "external-redis-s3"])
def test_rendered_manifests_are_valid_kubernetes_1_37(render: Renderer, variant: str) -> None:
    args: list[str] = ["--include-crds"]
    values: dict[str, Any] | None = None
    if variant == "ci-values":
        args += ["-f", str(CI_VALUES)]
    elif variant == "all-on":
        values = ALL_ON
    elif variant == "external-redis-s3":
        values = {"redis": {"external": {"url": "redis://redis.example:6379/1"}},
                  "storage": {"backend": "s3", "s3": {"bucket": "b", "region": "eu-west-1"}},
                  "secrets": {"existingSecret": "mine"}}  # fmt: skip
    docs = render(*args, values=values)
    assert "CustomResourceDefinition" in kinds(docs)
    unknown = _validate(docs)
    assert unknown == (["ServiceMonitor"] if variant == "all-on" else [])


def test_kubernetes_validate_has_the_1_37_schemas() -> None:
    import kubernetes_validate.utils as kv  # type: ignore[import-untyped]

    assert str(kv.latest_version()) >= KUBE_VERSION, kv.latest_version()


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"api": {"bogus": 1}}, "additional properties 'bogus' not allowed"),
        ({"api": {"replicaCount": "two"}}, "/api/replicaCount"),
        ({"api": {"service": {"port": "80"}}}, "/api/service/port"),
        ({"redis": {"external": {"uri": "redis://x"}}}, "additional properties 'uri' not allowed"),
        ({"storage": {"backend": "nfs"}}, "/storage/backend"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        ({"config": {"env": {"MAX_RETRIES": "3"}}}, "MAX_RETRIES"),
    ],
    ids=["unknown-top-level-key", "unknown-key-in-api", "string-for-int", "string-port",
         "unknown-nested-key", "bad-enum", "string-for-bool", "env-without-prefix"],
)  # fmt: skip
def test_values_schema_rejects(render: Renderer, values: dict[str, Any], where: str) -> None:
    err = render.fails(values=values)
    assert "values don't meet the specifications of the schema" in err, err
    assert where in err, err


def test_values_schema_rejects_a_string_replica_count_given_with_set(render: Renderer) -> None:
    err = render.fails("--set", "api.replicaCount=two")
    assert "/api/replicaCount" in err and "want integer" in err, err
