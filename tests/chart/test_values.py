"""Chart unit tests: each branch of values.yaml, rendered with helm template and inspected."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chart_manifests import config, containers, find, kinds, of_kind, pod_specs, rules
from support.chart_rendering import CHART, Renderer

pytestmark = pytest.mark.chart

S3 = {"storage": {"backend": "s3", "s3": {"bucket": "files", "region": "eu-central-1",
                                          "endpoint": "https://s3.example"}},
      "secrets": {"s3": {"accessKeyId": "AKIA123", "secretAccessKey": "s3cr3t"}}}  # fmt: skip


def secret_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    data = find(docs, "Secret").get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def env_sources(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (kind, ref["name"])
        for c in spec["containers"]
        for e in c.get("envFrom", [])
        for kind, ref in e.items()
    ]


# --- Redis -------------------------------------------------------------------------------


def test_bundled_redis_is_a_statefulset_with_services_and_the_url_points_at_it(render: Renderer) -> None:
    docs = render()
    sts = find(docs, "StatefulSet", "-redis")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == "r-downloader-redis-headless"
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7"
    assert find(docs, "Service", "-redis-headless")["spec"]["clusterIP"] == "None"
    assert find(docs, "Service", "-redis")["spec"]["ports"][0]["port"] == 6379
    assert config(docs)["DOWNLOADER_REDIS_URL"] == "redis://r-downloader-redis.ns.svc:6379/0"


def test_external_redis_renders_no_redis_and_uses_the_url(render: Renderer) -> None:
    docs = render(values={"redis": {"external": {"url": "rediss://cache.example:6380/2"}}})
    assert "StatefulSet" not in kinds(docs)
    assert [d["metadata"]["name"] for d in of_kind(docs, "Service")] == ["r-downloader-api"]
    assert config(docs)["DOWNLOADER_REDIS_URL"] == "rediss://cache.example:6380/2"


def test_redis_persistence_uses_a_volume_claim_template(render: Renderer) -> None:
    sts = find(render(values={"redis": {"persistence": {"enabled": True, "size": "5Gi"}}}), "StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "data" not in [v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]]


# --- Settings and secrets ------------------------------------------------------------------


def test_configmap_holds_the_kubernetes_settings(render: Renderer) -> None:
    cfg = config(render(namespace="dl"))
    assert cfg["DOWNLOADER_KUBE_NAMESPACE"] == "dl"
    assert cfg["DOWNLOADER_WORKER_IMAGE"] == "downloader-worker:0.2.0"
    assert cfg["DOWNLOADER_WORKER_ENV_CONFIGMAP"] == "r-downloader-config"
    assert cfg["DOWNLOADER_WORKER_ENV_SECRET"] == "r-downloader"
    assert cfg["DOWNLOADER_WORKER_SERVICE_ACCOUNT"] == "r-downloader-worker"
    assert json.loads(cfg["DOWNLOADER_WORKER_RESOURCES"])["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert cfg["DOWNLOADER_OPERATOR_LIVENESS_PORT"] == "8080"
    assert cfg["DOWNLOADER_STORAGE_BACKEND"] == "filesystem"
    assert cfg["DOWNLOADER_STORAGE_ROOT"] == "/data/files"
    assert cfg["DOWNLOADER_TMP_DIR"] == "/data/tmp"
    assert cfg["DOWNLOADER_DOWNLOAD_URL"] == "http://localhost/"


def test_image_tags_default_to_app_version_and_can_be_set(render: Renderer) -> None:
    docs = render(
        values={
            "api": {"image": {"repository": "reg/api", "tag": "1.2.3", "pullPolicy": "Always"}},
            "worker": {"image": {"repository": "reg/worker", "tag": "", "pullPolicy": "Always"}},
        }
    )
    images = {name: spec["containers"][0]["image"] for name, spec in pod_specs(docs)}
    assert images["r-downloader-api"] == "reg/api:1.2.3"
    assert images["r-downloader-notifier"] == images["r-downloader-operator"] == "reg/worker:0.2.0"
    assert config(docs)["DOWNLOADER_WORKER_IMAGE"] == "reg/worker:0.2.0"


def test_extra_settings_go_to_the_configmap(render: Renderer) -> None:
    cfg = config(render(values={"config": {"env": {"DOWNLOADER_MAX_RETRIES": "5"}}}))
    assert cfg["DOWNLOADER_MAX_RETRIES"] == "5"


def test_s3_storage_puts_bucket_in_configmap_and_keys_only_in_the_secret(render: Renderer) -> None:
    docs = render(values=S3)
    cfg = config(docs)
    assert cfg["DOWNLOADER_STORAGE_BACKEND"] == "s3"
    assert cfg["DOWNLOADER_S3_BUCKET"] == "files"
    assert cfg["DOWNLOADER_S3_REGION"] == "eu-central-1"
    assert cfg["DOWNLOADER_S3_ENDPOINT_URL"] == "https://s3.example"
    assert secret_data(docs) == {"AWS_ACCESS_KEY_ID": "AKIA123", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    everything_but_the_secret = json.dumps([d for d in docs if d["kind"] != "Secret"])
    assert "AKIA123" not in everything_but_the_secret and "s3cr3t" not in everything_but_the_secret
    # No shared files volume with S3.
    for _, spec in pod_specs(docs):
        assert "files" not in [v["name"] for v in spec.get("volumes", [])]


def test_s3_storage_needs_a_bucket(render: Renderer) -> None:
    assert "/storage/s3/bucket" in render.fails(values={"storage": {"backend": "s3"}})


def test_kafka_servers_in_configmap_and_credentials_in_the_secret(render: Renderer) -> None:
    docs = render(values={"kafka": {"bootstrapServers": "k0:9092,k1:9092"},
                          "secrets": {"kafka": {"username": "svc", "password": "pw"}}})  # fmt: skip
    assert config(docs)["DOWNLOADER_KAFKA_BOOTSTRAP_SERVERS"] == "k0:9092,k1:9092"
    assert secret_data(docs) == {"DOWNLOADER_KAFKA_USERNAME": "svc", "DOWNLOADER_KAFKA_PASSWORD": "pw"}
    assert "KAFKA_PASSWORD" not in json.dumps(config(docs))


def test_default_secret_is_empty_and_referenced_by_every_pod(render: Renderer) -> None:
    docs = render()
    assert secret_data(docs) == {}
    for name in ("r-downloader-api", "r-downloader-notifier", "r-downloader-operator"):
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert env_sources(spec) == [("configMapRef", "r-downloader-config"), ("secretRef", "r-downloader")]


def test_existing_secret_renders_no_secret_and_pods_reference_it(render: Renderer) -> None:
    docs = render(values={"secrets": {"existingSecret": "prod-keys", "callbackSigningKey": "ignored"}})
    assert "Secret" not in kinds(docs)
    assert config(docs)["DOWNLOADER_WORKER_ENV_SECRET"] == "prod-keys"
    for d in of_kind(docs, "Deployment"):
        assert ("secretRef", "prod-keys") in env_sources(d["spec"]["template"]["spec"])


# --- Storage volumes ------------------------------------------------------------------------


def test_filesystem_storage_defaults_to_emptydir(render: Renderer) -> None:
    docs = render()
    assert "PersistentVolumeClaim" not in kinds(docs)
    for name in ("-api", "-notifier"):
        volumes = {
            v["name"]: v for v in find(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["files"] == {"name": "files", "emptyDir": {}}


def test_filesystem_storage_on_a_created_rwx_claim_shared_by_api_and_notifier(render: Renderer) -> None:
    docs = render(values={"storage": {"filesystem": {"persistentVolumeClaim": {"enabled": True}}}})
    pvc = find(docs, "PersistentVolumeClaim", "-files")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("-api", "-notifier"):
        volumes = {
            v["name"]: v for v in find(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["files"]["persistentVolumeClaim"] == {"claimName": "r-downloader-files"}
    # ...and the worker pods the operator creates mount it too.
    assert config(docs)["DOWNLOADER_WORKER_STORAGE_CLAIM"] == "r-downloader-files"


def test_filesystem_storage_on_an_existing_claim(render: Renderer) -> None:
    docs = render(
        values={
            "storage": {
                "filesystem": {"persistentVolumeClaim": {"enabled": True, "existingClaim": "nfs-files"}}
            }
        }
    )
    assert "PersistentVolumeClaim" not in kinds(docs)
    volumes = {
        v["name"]: v for v in find(docs, "Deployment", "-notifier")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["files"]["persistentVolumeClaim"] == {"claimName": "nfs-files"}


# --- Optional API objects -------------------------------------------------------------------


def test_ingress_off_by_default_and_on_routes_to_the_api_service(render: Renderer) -> None:
    assert "Ingress" not in kinds(render())
    ing = find(render(values={"api": {"ingress": {"enabled": True, "className": "nginx"}}}), "Ingress")
    assert ing["spec"]["ingressClassName"] == "nginx"
    path = ing["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {"name": "r-downloader-api", "port": {"name": "http"}}


def test_hpa_off_by_default_and_on_drops_replicas(render: Renderer) -> None:
    docs = render()
    assert "HorizontalPodAutoscaler" not in kinds(docs)
    assert find(docs, "Deployment", "-api")["spec"]["replicas"] == 2
    docs = render(values={"api": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}}})
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "r-downloader-api",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert "replicas" not in find(docs, "Deployment", "-api")["spec"]


def test_pdb_off_by_default_and_on_selects_the_api(render: Renderer) -> None:
    assert "PodDisruptionBudget" not in kinds(render())
    pdb = find(render(values={"api": {"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}}}),
               "PodDisruptionBudget")  # fmt: skip
    assert pdb["spec"]["minAvailable"] == "50%"
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def test_servicemonitor_off_by_default_and_on_scrapes_the_api(render: Renderer) -> None:
    assert "ServiceMonitor" not in kinds(render())
    sm = find(render(values={"monitoring": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def test_grafana_dashboard_off_by_default_and_on_is_valid_json(render: Renderer) -> None:
    assert len(of_kind(render(), "ConfigMap")) == 1
    cm = find(
        render(values={"monitoring": {"grafanaDashboard": {"enabled": True}}}), "ConfigMap", "-dashboard"
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["downloader.json"])
    assert dashboard["title"] == "Downloader" and dashboard["panels"]


# --- NetworkPolicy -----------------------------------------------------------------------------


def test_worker_networkpolicy_blocks_cluster_and_metadata_allows_redis_and_dns(render: Renderer) -> None:
    np = find(render(), "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    internet, redis, dns = np["spec"]["egress"]
    block = internet["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert block["except"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32"]
    assert redis["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}


def test_networkpolicy_cluster_ranges_are_configurable_and_metadata_stays_blocked(render: Renderer) -> None:
    np = find(
        render(
            values={
                "networkPolicy": {"clusterCIDRs": ["100.64.0.0/10"]},
                "redis": {"external": {"url": "redis://r.example:6379/0"}},
            }
        ),
        "NetworkPolicy",
    )
    assert np["spec"]["egress"][0]["to"][0]["ipBlock"]["except"] == ["100.64.0.0/10", "169.254.169.254/32"]
    assert len(np["spec"]["egress"]) == 2  # no rule to a bundled Redis


def test_networkpolicy_can_be_turned_off(render: Renderer) -> None:
    assert "NetworkPolicy" not in kinds(render(values={"networkPolicy": {"enabled": False}}))


# --- Pods ---------------------------------------------------------------------------------------


def test_every_container_is_non_root_read_only_and_drops_all(render: Renderer) -> None:
    docs = render(values={"monitoring": {"grafanaDashboard": {"enabled": True}}})
    seen = set()
    for pod, spec, c in containers(docs):
        seen.add(pod)
        sc = c["securityContext"]
        assert spec["securityContext"]["runAsNonRoot"] is True, pod
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, pod
        assert sc["readOnlyRootFilesystem"] is True, pod
        assert sc["allowPrivilegeEscalation"] is False, pod
        assert sc["capabilities"]["drop"] == ["ALL"], pod
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, pod
        assert c["resources"]["requests"] and c["resources"]["limits"], pod
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts or pod.endswith("test-connection"), pod
    assert seen == {"r-downloader-api", "r-downloader-notifier", "r-downloader-operator",
                    "r-downloader-redis", "r-downloader-test-connection"}  # fmt: skip


def test_api_and_notifier_mount_writable_data_dirs(render: Renderer) -> None:
    for name in ("-api", "-notifier"):
        c = find(render(), "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp", "/data/tmp", "/data/files"}


def test_api_probes_and_port(render: Renderer) -> None:
    c = find(render(), "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["args"][0] == "api"


def test_operator_is_one_recreated_replica_with_a_liveness_probe(render: Renderer) -> None:
    dep = find(render(), "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "r-downloader-operator"
    c = spec["containers"][0]
    assert c["args"] == ["operator"]
    assert c["ports"][0]["containerPort"] == 8080
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_notifier_runs_the_worker_image_without_a_token(render: Renderer) -> None:
    spec = find(render(), "Deployment", "-notifier")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["containers"][0]["args"] == ["notifier"]


def test_every_deployment_has_a_config_checksum_that_follows_the_configmap(render: Renderer) -> None:
    def checksums(values: dict[str, Any] | None) -> dict[str, str]:
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in of_kind(render(values=values), "Deployment")}  # fmt: skip

    before = checksums(None)
    assert set(before) == {"r-downloader-api", "r-downloader-notifier", "r-downloader-operator"}
    assert checksums(None) == before  # stable
    after = checksums({"config": {"downloadUrl": "https://files.example/"}})
    assert all(after[name] != before[name] for name in before)


def test_secret_checksum_follows_the_secret(render: Renderer) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        dep = find(render(values=values), "Deployment", "-api")
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    assert checksum(None) != checksum({"secrets": {"callbackSigningKey": "new"}})


# --- RBAC ----------------------------------------------------------------------------------------


def test_rbac_rules_are_exactly_as_designed(render: Renderer) -> None:
    docs = render(namespace="dl")
    operator = find(docs, "Role", "-operator")
    assert rules(operator) == sorted([
        (("downloader.io",), ("aggregations", "aggregations/status"),
         ("create", "get", "list", "patch", "update", "watch")),
        (("apps",), ("deployments",), ("create", "get", "list", "patch", "watch")),
        (("",), ("pods",), ("list", "patch")),  # pod-deletion-cost before a scale-down
        (("", "events.k8s.io"), ("events",), ("create", "patch")),
    ])  # fmt: skip
    cluster_role = find(docs, "ClusterRole")
    assert cluster_role["metadata"]["name"] == "dl-r-downloader-operator"
    assert rules(cluster_role) == [
        (("apiextensions.k8s.io",), ("customresourcedefinitions",), ("get", "list", "watch"))
    ]
    assert rules(find(docs, "Role", "-api")) == [(("downloader.io",), ("aggregations",), ("create", "get"))]
    for kind, suffix, role, sa in [("RoleBinding", "-operator", "r-downloader-operator", "r-downloader-operator"),
                                   ("ClusterRoleBinding", "", "dl-r-downloader-operator", "r-downloader-operator"),
                                   ("RoleBinding", "-api", "r-downloader-api", "r-downloader-api")]:  # fmt: skip
        binding = find(docs, kind, suffix)
        assert binding["roleRef"]["name"] == role
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "dl"}]
    assert (
        find(docs, "Deployment", "-api")["spec"]["template"]["spec"]["serviceAccountName"]
        == "r-downloader-api"
    )
    assert find(docs, "ServiceAccount", "-worker")["automountServiceAccountToken"] is False


def test_rbac_can_be_turned_off(render: Renderer) -> None:
    got = kinds(render(values={"rbac": {"create": False}}))
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(got)


# --- Labels, names, NOTES, helm test ----------------------------------------------------------


def test_every_object_has_the_standard_labels_with_a_component(render: Renderer) -> None:
    values = {"api": {"ingress": {"enabled": True}, "autoscaling": {"enabled": True},
                      "podDisruptionBudget": {"enabled": True}},
              "monitoring": {"serviceMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
              "storage": {"filesystem": {"persistentVolumeClaim": {"enabled": True}}},
              "commonLabels": {"team": "data"}}  # fmt: skip
    docs = render(values=values)
    assert len(docs) >= 25
    for d in docs:
        labels = d["metadata"]["labels"]
        where = f"{d['kind']}/{d['metadata']['name']}"
        assert labels["app.kubernetes.io/component"], where
        assert labels["app.kubernetes.io/name"] == "downloader", where
        assert labels["app.kubernetes.io/instance"] == "r", where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["helm.sh/chart"] == "downloader-0.1.0", where
        assert labels["team"] == "data", where
    for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_fullname_override_and_long_release_names_stay_within_63(render: Renderer) -> None:
    docs = render(name="a" * 53)  # helm's longest release name
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
    docs = render(values={"fullnameOverride": "dl"})
    assert find(docs, "Deployment", "-api")["metadata"]["name"] == "dl-api"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "kubectl port-forward --namespace dl service/r-downloader-api 8000:80"),
        ({"api": {"ingress": {"enabled": True}}}, "http://downloader.example.com/"),
        ({"api": {"service": {"type": "NodePort", "port": 80}}}, "NODE_PORT"),
        ({"api": {"hostNetwork": True, "containerPort": 18000}}, "http://<node address>:18000/"),
    ],
    ids=["clusterip", "ingress", "nodeport", "host-network"],
)
def test_notes_render_how_to_reach_the_api_and_list_aggregations(
    helm: Path, tmp_path: Path, values: dict[str, Any], expected: str
) -> None:
    # helm template never prints NOTES.txt and `helm install --dry-run=client` still wants a
    # cluster, so a copy of the chart renders NOTES.txt into a ConfigMap instead.
    chart = tmp_path / "downloader"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + notes + "\n{{- end }}\n", encoding="utf-8"
    )
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "notes-under-test" . | quote }}}\n',
        encoding="utf-8",
    )
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    cmd = [str(helm), "template", "r", str(chart), "--namespace", "dl", "-f", str(path),
           "--show-only", "templates/notes-under-test.yaml"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    text = yaml.safe_load(done.stdout)["data"]["notes"]
    assert expected in text
    assert "kubectl get aggregations --namespace dl" in text
    assert "helm test r --namespace dl" in text


def test_helm_test_pod_gets_the_api_healthz(render: Renderer) -> None:
    pod = find(render(), "Pod", "-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"][-1] == "http://r-downloader-api:80/healthz"
    assert "Pod" not in kinds(render(values={"tests": {"enabled": False}}))


def test_sentinel_replaces_the_bundled_redis_and_reaches_every_process(render: Renderer) -> None:
    docs = render(values={"redis": {"external": {"sentinels": ["s0.redis:26379", "s1.redis:26379"],
                                                 "masterName": "mymaster", "waitReplicas": 1}}})  # fmt: skip
    cfg = config(docs)
    assert cfg["DOWNLOADER_REDIS_SENTINELS"] == "s0.redis:26379,s1.redis:26379"
    assert cfg["DOWNLOADER_REDIS_MASTER_NAME"] == "mymaster"
    assert cfg["DOWNLOADER_REDIS_WAIT_REPLICAS"] == "1"
    assert not [d for d in docs if d["kind"] == "StatefulSet"]  # no bundled Redis


def test_sentinel_needs_a_master_name_and_well_formed_addresses(render: Renderer) -> None:
    assert "masterName is needed" in render.fails(values={"redis": {"external": {"sentinels": ["s0:26379"]}}})
    assert "sentinels" in render.fails(
        values={"redis": {"external": {"sentinels": ["no-port"], "masterName": "m"}}}
    )


def test_kafka_producer_settings_pass_through_as_json(render: Renderer) -> None:
    settings = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "linger.ms": 5}
    cfg = config(render(values={"kafka": {"bootstrapServers": "k0:9092", "config": settings}}))
    assert json.loads(cfg["DOWNLOADER_KAFKA_CONFIG"]) == settings
