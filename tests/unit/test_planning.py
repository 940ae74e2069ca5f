"""The operator's planning: replicas, status, conditions and objects from plain data."""

from __future__ import annotations

import re

import pytest

from downloader.cluster import planning
from downloader.cluster.planning import Observed, Spec, plan

NOW = 1_800_000_000.0


def spec(**fields: object) -> Spec:
    return Spec.from_dict({"id": "shop.example.com", "limit": 32, "workerConcurrency": 8, "maxWorkers": 10,
                           "idleSeconds": 300, **fields})  # fmt: skip


def conditions(p: planning.Plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in p.status["conditions"]}


def test_defaults_fill_a_minimal_spec() -> None:
    s = Spec.from_dict({"id": "a", "limit": 4})
    assert (s.worker_concurrency, s.max_workers, s.idle_seconds, s.paused, s.proxy) == (
        16,
        10,
        300,
        False,
        "",
    )


@pytest.mark.parametrize(
    "pending,in_flight,expected",
    [(1, 0, 1), (8, 0, 1), (9, 0, 2), (20, 12, 4), (1000, 0, 4)],  # cap: ceil(32 / 8) = 4
)
def test_replicas_grow_with_backlog_up_to_the_limits_need(
    pending: int, in_flight: int, expected: int
) -> None:
    p = plan(spec(), Observed(now=NOW, pending=pending, in_flight=in_flight, deployment_replicas=1))
    assert p.replicas == expected


def test_max_workers_caps_replicas() -> None:
    p = plan(spec(limit=1000, maxWorkers=3), Observed(now=NOW, pending=10_000))
    assert p.replicas == 3


def test_a_limit_smaller_than_one_pods_concurrency_needs_one_pod() -> None:
    assert spec(limit=2, workerConcurrency=16).worker_cap == 1


def test_idle_aggregations_scale_to_zero_only_after_idle_seconds() -> None:
    recent = Observed(now=NOW, deployment_replicas=3, ready_replicas=3, last_activity=NOW - 100)
    p = plan(spec(), recent)
    assert p.replicas == 3  # busy 100 s ago: keep the pods
    assert conditions(p)["Active"] == ("False", "Idle")
    idle = Observed(now=NOW, deployment_replicas=3, ready_replicas=3, last_activity=NOW - 301)
    p = plan(spec(), idle)
    assert p.replicas == 0
    assert conditions(p)["Ready"] == ("True", "ScaledToZero")
    assert ("Scaled", "workers 3 -> 0: idle") in p.events


def test_never_active_aggregations_have_no_workers() -> None:
    p = plan(spec(), Observed(now=NOW))
    assert p.replicas == 0 and ("Created", "worker Deployment with 0 replicas: idle") in p.events
    assert "lastActivityTime" not in p.status


def test_paused_scales_to_zero_with_work_waiting() -> None:
    p = plan(spec(paused=True), Observed(now=NOW, pending=50, deployment_replicas=4, ready_replicas=4))
    assert p.replicas == 0 and p.paused
    assert conditions(p)["Active"] == ("False", "Paused")
    assert p.status["pending"] == 50


def test_status_counts_and_activity_time() -> None:
    p = plan(spec(), Observed(now=NOW, pending=5, in_flight=3, deployment_replicas=1, ready_replicas=1),
             generation=7)  # fmt: skip
    assert {
        k: p.status[k]
        for k in ("pending", "inFlight", "workers", "readyWorkers", "limit", "observedGeneration")
    } == {
        "pending": 5,
        "inFlight": 3,
        "workers": 1,
        "readyWorkers": 1,
        "limit": 32,
        "observedGeneration": 7,
    }
    assert p.status["lastActivityTime"] == "2027-01-15T08:00:00Z"
    assert conditions(p) == {"Ready": ("True", "WorkersReady"), "Active": ("True", "Working"),
                             "Degraded": ("False", "AsExpected")}  # fmt: skip


def test_workers_not_yet_ready_are_not_ready() -> None:
    p = plan(spec(), Observed(now=NOW, pending=30, deployment_replicas=4, ready_replicas=1))
    assert conditions(p)["Ready"] == ("False", "WorkersStarting")


def test_redis_outage_is_degraded_and_keeps_workers() -> None:
    p = plan(spec(), Observed(now=NOW, deployment_replicas=2, ready_replicas=2, last_activity=NOW - 5,
                              redis_error="ConnectionError: refused"))  # fmt: skip
    assert conditions(p)["Degraded"] == ("True", "RedisUnavailable")
    assert p.replicas == 2


def test_transition_times_move_only_when_the_status_changes() -> None:
    first = plan(spec(), Observed(now=NOW, pending=1, deployment_replicas=1, ready_replicas=1))
    later = plan(spec(), Observed(now=NOW + 60, pending=1, deployment_replicas=1, ready_replicas=1,
                                  conditions=tuple(first.status["conditions"])))  # fmt: skip
    changed = plan(spec(), Observed(now=NOW + 120, deployment_replicas=1, ready_replicas=1, last_activity=NOW,
                                    conditions=tuple(later.status["conditions"])))  # fmt: skip
    times = [
        {c["type"]: c["lastTransitionTime"] for c in p.status["conditions"]} for p in (first, later, changed)
    ]
    assert times[0] == times[1]
    assert times[2]["Active"] != times[1]["Active"] and times[2]["Ready"] == times[1]["Ready"]


def test_the_redis_hash_comes_from_the_spec() -> None:
    p = plan(spec(proxy="http://proxy:3128"), Observed(now=NOW))
    assert p.redis_hash == {"ID": "shop.example.com", "Limit": "32", "Proxy": "http://proxy:3128"}


@pytest.mark.parametrize(
    "aggr_id,expected",
    [
        ("shop", "shop"),
        ("shop-1", "shop-1"),
        ("shop.example.com", "shop.example.com"),
        ("Shop.Example.com", None),
        ("a..b", None),
        ("loadtest:3", None),
        ("x" * 80, None),
        ("---", None),
        ("ünïcode", None),
    ],
)
def test_resource_names_are_dns_1123_and_tell_ids_apart(aggr_id: str, expected: str | None) -> None:
    name = planning.resource_name(aggr_id)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name), name
    assert len(name) <= planning.NAME_MAX
    if expected is not None:
        assert name == expected
    else:
        assert re.search(r"-[0-9a-f]{8}$", name), name
    assert planning.resource_name(aggr_id.upper() + "x") != name


def test_ids_differing_only_in_case_get_different_names() -> None:
    assert planning.resource_name("Shop") != planning.resource_name("shop")


def test_the_worker_deployment_runs_the_aggregations_worker() -> None:
    pod = planning.WorkerPod(image="img:1", resources={"requests": {"cpu": "100m"}}, env_configmap="cfg",
                             env_secret="sec", service_account="sa", storage_claim="shared-files")  # fmt: skip
    body = planning.deployment(spec(), "ns", 3, pod)
    assert body["metadata"]["name"] == "downloader-worker-" + planning.resource_name("shop.example.com")
    assert body["spec"]["replicas"] == 3
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["worker", "--aggregation", "shop.example.com"]
    assert {"name": "DOWNLOADER_WORKER_CONCURRENCY", "value": "8"} in container["env"]
    assert container["envFrom"] == [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}}]
    assert pod["serviceAccountName"] == "sa" and pod["terminationGracePeriodSeconds"] > 25
    selector = body["spec"]["selector"]["matchLabels"]
    assert selector.items() <= body["spec"]["template"]["metadata"]["labels"].items()


def test_a_new_aggregation_resource_keeps_the_exact_id() -> None:
    body = planning.aggregation_resource("Loadtest:3", 0, "", "ns")
    assert body["spec"] == {"id": "Loadtest:3", "limit": 1}
    assert body["metadata"]["annotations"][planning.ID_ANNOTATION] == "Loadtest:3"


def test_activity_time_is_refreshed_coarsely_so_a_busy_status_does_not_change_every_round() -> None:
    s = spec(idleSeconds=300)
    recent = plan(s, Observed(now=NOW, pending=3, deployment_replicas=1, last_activity=NOW - 10))
    assert recent.status["lastActivityTime"] == "2027-01-15T07:59:50Z"  # kept: 10 s < 30 s
    stale = plan(s, Observed(now=NOW, pending=3, deployment_replicas=1, last_activity=NOW - 31))
    assert stale.status["lastActivityTime"] == "2027-01-15T08:00:00Z"
    assert planning.activity_granularity(spec(idleSeconds=2)) == 0.5


def test_only_real_differences_count_as_drift() -> None:
    from downloader.operator.handlers import _contains

    wanted = {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "args": ["a"]}]}}}
    server = {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "args": ["a"],
              "terminationMessagePath": "/dev/termination-log"}], "dnsPolicy": "ClusterFirst"}}}  # fmt: skip
    assert _contains(server, wanted)
    assert not _contains({**server, "replicas": 3}, wanted)
    changed = {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "args": ["b"]}]}}}
    assert not _contains(changed, wanted)


def test_worker_pods_are_hardened_and_write_only_to_volumes() -> None:
    body = planning.deployment(spec(), "ns", 1, planning.WorkerPod(image="img", storage_claim="files-pvc"))
    pod = body["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    container = pod["containers"][0]
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"tmp": "/tmp", "downloads": "/data/tmp", "files": "/data/files"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["files"]["persistentVolumeClaim"] == {"claimName": "files-pvc"}
    no_claim = planning.deployment(spec(), "ns", 1, planning.WorkerPod(image="img"))
    assert {"name": "files", "emptyDir": {}} in no_claim["spec"]["template"]["spec"]["volumes"]


def test_worker_pods_know_their_own_name() -> None:
    container = planning.deployment(spec(), "ns", 1, planning.WorkerPod(image="img"))["spec"]["template"][
        "spec"
    ]["containers"][0]
    pod_name = next(e for e in container["env"] if e["name"] == "DOWNLOADER_POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_deletion_costs_rank_pods_by_downloads_in_flight_and_skip_unchanged_ones() -> None:
    cost = planning.DELETION_COST
    annotations = {"w-a": {}, "w-b": {cost: "3"}, "w-c": {cost: "2"}, "w-d": {"other": "x"}}
    downloads = {"w-a": 2, "w-b": 3, "gone-pod": 5}  # w-c finished its downloads; w-d never had any
    assert planning.deletion_costs(annotations, downloads) == {"w-a": "2", "w-c": "0"}
    assert planning.deletion_costs({}, downloads) == {}
    assert planning.deletion_costs({"w-a": {cost: "2"}}, downloads) == {}


def test_worker_pods_are_given_their_drain_and_ten_seconds_more_before_a_kill() -> None:
    def grace(pod: planning.WorkerPod) -> object:
        return planning.deployment(spec(), "ns", 1, pod)["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]

    assert grace(planning.WorkerPod(image="img")) == 35
    assert grace(planning.WorkerPod(image="img", shutdown_grace_seconds=90.5)) == 101


def test_worker_pod_annotations_never_replace_the_aggregation_id() -> None:
    pod = planning.WorkerPod(image="img", pod_annotations={"team": "x", planning.ID_ANNOTATION: "forged"})
    template = planning.deployment(spec(), "ns", 1, pod)["spec"]["template"]
    assert template["metadata"]["annotations"] == {"team": "x", planning.ID_ANNOTATION: spec().id}


def test_worker_pod_security_and_affinity_are_copies_of_the_settings() -> None:
    """The Deployment body is the operator's to change (kopf adds owner references): it must not
    share nested objects with the settings the next Deployment is built from."""
    pod = planning.WorkerPod(image="img", affinity={"podAntiAffinity": {"x": [1]}})
    body = planning.deployment(spec(), "ns", 1, pod)["spec"]["template"]["spec"]
    body["securityContext"]["seccompProfile"]["type"] = "Unconfined"
    body["containers"][0]["securityContext"]["capabilities"]["drop"].append("NET_RAW")
    body["affinity"]["podAntiAffinity"]["x"].append(2)
    assert planning.WORKER_POD_SECURITY_CONTEXT["seccompProfile"] == {"type": "RuntimeDefault"}
    assert planning.WORKER_CONTAINER_SECURITY_CONTEXT["capabilities"] == {"drop": ["ALL"]}
    assert pod.affinity == {"podAntiAffinity": {"x": [1]}}
    assert planning.deployment(spec(), "ns", 1, pod)["spec"]["template"]["spec"] != body
