"""The operator's calls to the Kubernetes API, as the real kube-apiserver counts them (its own
`apiserver_request_total` on /metrics): at rest a refresh writes nothing and reads no
Deployment; a change is still written; Aggregations applied together get one Deployment and
one Created event each.

The counters are the whole API server's, not a namespace's: each test counts while its own
operator is the only one running, and reads no counted resource itself inside a window."""

from __future__ import annotations

import collections
import datetime
import json
import math
import re
import time
from pathlib import Path

import pytest
import redis
from support.kubetools import Kube, aggregation_doc, wait_for
from support.operator_proc import OperatorProcess
from testbed.controlplane import ControlPlane

pytestmark = pytest.mark.k8s

INTERVAL = 1  # DOWNLOADER_OPERATOR_INTERVAL_SECONDS: a refresh of every Aggregation each second
#: (verb, resource, subresource, code): one series of apiserver_request_total
Call = tuple[str, str, str, str]
#: The writes the operator could make. Not DELETE: it deletes nothing (its Deployments go with
#: their Aggregation by owner reference), while the namespace controller keeps deleting, with
#: backoff, what is left in the namespaces of earlier tests on this shared control plane (an
#: Aggregation whose operator has stopped keeps its finalizer): the API server counts those too.
WRITES = frozenset({"POST", "PUT", "PATCH", "APPLY"})
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def requests_served(cluster: ControlPlane) -> collections.Counter[Call]:
    """The API server's count of the requests it has answered, by verb, resource, subresource
    and response code (summed over its other labels: group, version, scope, component)."""
    status, text = cluster.get("/metrics")
    assert status == 200 and isinstance(text, str), f"GET /metrics answered {status}: {text!r:.300}"
    served: collections.Counter[Call] = collections.Counter()
    prefix = "apiserver_request_total{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels_text, _, value = line[len(prefix) :].rpartition("} ")
            labels = dict(_LABEL.findall(labels_text))
            verb, resource, sub, code = (
                labels.get(k, "") for k in ("verb", "resource", "subresource", "code")
            )
            served[(verb, resource, sub, code)] += int(float(value))
    return served


def named(served: collections.Counter[Call]) -> dict[str, int]:
    """`served` as {"VERB resource[/subresource] code": count}, for assertions that read well."""
    return {
        f"{verb} {resource}{'/' + sub if sub else ''} {code}": count
        for (verb, resource, sub, code), count in sorted(served.items())
    }


def aggregation_events(kube: Kube, reason: str | None = None) -> collections.Counter[str]:
    """Events posted on each Aggregation of the namespace (an event's `count` included)."""
    counted: collections.Counter[str] = collections.Counter()
    for event in kube.items("events"):
        involved = event["involvedObject"]
        if involved["kind"] == "Aggregation" and reason in (None, event["reason"]):
            counted[involved["name"]] += int(event.get("count") or 1)
    return counted


def settled(kube: Kube, name: str, replicas: int) -> bool:
    """The Deployment has `replicas` Ready pods (kwok), and the status says so."""
    deployment = kube.deployment(name) or {}
    status = (kube.aggregation(name) or {}).get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
    return (
        (deployment.get("status") or {}).get("readyReplicas") == replicas
        and status.get("readyWorkers") == replicas
        and conditions.get("Ready") == "True"
    )


def activity_age(kube: Kube, name: str) -> float:
    """Seconds since the status' lastActivityTime."""
    stamp = ((kube.aggregation(name) or {}).get("status") or {}).get("lastActivityTime")
    return time.time() - datetime.datetime.fromisoformat(stamp).timestamp() if stamp else math.inf


def test_at_rest_the_refreshes_write_nothing_and_read_no_deployment(
    operator: OperatorProcess, kube: Kube, rdb: redis.Redis, cluster: ControlPlane, tmp_path: Path
) -> None:
    """One Aggregation with a queued job and its Ready worker, status written: five refreshes
    later the API server has seen no write of the Deployment or of the Aggregation (status
    included), no GET of the Deployment, and no new event on the Aggregation."""
    rdb.zadd("jobs:calm", {"queued": 1})  # one worker wanted: a Deployment with a Ready pod
    kube.apply(aggregation_doc("calm"), tmp_path)
    wait_for(lambda: settled(kube, "calm", 1), 60, "the Ready worker, and the status saying so")
    # A busy aggregation's lastActivityTime is rewritten every 30 s (planning.activity_granularity):
    # a write the window must not meet. Start it with that write at least 15 s away.
    wait_for(lambda: activity_age(kube, "calm") < 15, 45, "a lastActivityTime younger than 15 s")
    operator.wait_reconciles(2, "two refreshes after the status was written (the watch catches up)")
    events_before = aggregation_events(kube)
    before = requests_served(cluster)
    operator.wait_reconciles(5, "five refreshes")
    window = requests_served(cluster) - before
    assert aggregation_events(kube) == events_before, "an event posted at rest"
    counted = named(
        collections.Counter(
            {
                call: count
                for call, count in window.items()
                if (call[1] == "deployments" and call[2] == "" and call[0] in WRITES | {"GET"})
                or (call[1] == "aggregations" and call[0] in WRITES)
            }
        )
    )
    assert counted == {}, f"calls at rest: {counted}; everything in the window: {named(window)}"
    # Still a live reconcile, not a stuck one: a queued job more is seen within a few refreshes.
    rdb.zadd("jobs:calm", {"queued-2": 1})
    wait_for(lambda: ((kube.aggregation("calm") or {}).get("status") or {}).get("pending") == 2, 30,
             "the second queued job in the status")  # fmt: skip


def test_a_change_is_still_written_to_the_deployment(
    operator: OperatorProcess, kube: Kube, rdb: redis.Redis, cluster: ControlPlane, tmp_path: Path
) -> None:
    """A Deployment scaled down by hand is scaled back by a refresh, and a new limit resizes it:
    each a PATCH of the Deployment by the operator (kubectl's own is one of deployments/scale)."""
    rdb.zadd("jobs:moving", {f"job{i:03d}": 1 for i in range(100)})  # ceil(100 / 8) = 13 wanted
    kube.apply(aggregation_doc("moving", limit=16, workerConcurrency=8, maxWorkers=5), tmp_path)
    wait_for(lambda: settled(kube, "moving", 2), 60, "2 Ready workers: capped by ceil(16 / 8)")

    before = requests_served(cluster)
    kube.run("scale", "deployment/downloader-worker-moving", "--replicas=0")
    wait_for(lambda: (kube.deployment("moving") or {})["spec"]["replicas"] == 2, 30,
             "the operator to scale the Deployment back to 2")  # fmt: skip
    scaled_back = named(requests_served(cluster) - before)
    assert scaled_back.get("PATCH deployments 200", 0) >= 1, scaled_back  # kubectl's is deployments/scale

    kube.run("patch", "aggregation/moving", "--type=merge", "-p", '{"spec":{"limit":32}}')
    wait_for(lambda: (kube.deployment("moving") or {})["spec"]["replicas"] == 4, 30,
             "4 workers for the new limit: ceil(32 / 8)")  # fmt: skip
    assert rdb.hget("aggr:moving", "Limit") == "32"
    scaled = [e["message"] for e in kube.items("events") if e["reason"] == "Scaled"
              and e["involvedObject"]["name"] == "moving"]  # fmt: skip
    assert sorted(scaled) == ["workers 0 -> 2: 100 jobs queued or in flight",
                              "workers 2 -> 4: 100 jobs queued or in flight"]  # fmt: skip


def test_aggregations_applied_at_once_get_one_deployment_and_one_created_event_each(
    operator: OperatorProcess, kube: Kube, rdb: redis.Redis, cluster: ControlPlane, tmp_path: Path
) -> None:
    """Twenty Aggregations in one `kubectl apply` of a List, while Redis holds every on.create
    past the first refresh (as a loaded operator would): each is created once (one POST
    answered 201, one Deployment owned by it) and announced once (one Created event), also
    after a few rounds of refreshes."""
    names = [f"many-{n:02d}" for n in range(20)]
    doc = {"apiVersion": "v1", "kind": "List", "items": [aggregation_doc(name) for name in names]}
    path = tmp_path / "many.json"
    path.write_text(json.dumps(doc))
    before = requests_served(cluster)
    # A reconcile reads the backlog first: held 3 s, each on.create (and first-sight create) is
    # still running when the sweep's first refresh of it comes (1 s after): each could create
    # the Deployment.
    rdb.execute_command("CLIENT", "PAUSE", str(3000 * INTERVAL), "ALL")  # type: ignore[no-untyped-call]
    kube.run("apply", "-f", str(path))
    wait_for(lambda: len(kube.items("deployments", "downloader.io/aggregation")) == len(names), 60,
             "a Deployment for every Aggregation")  # fmt: skip
    wait_for(lambda: len(aggregation_events(kube, "Created")) == len(names), 60,
             "a Created event on every Aggregation")  # fmt: skip
    operator.wait_reconciles(3 * len(names), "three rounds of refreshes")
    served = named(requests_served(cluster) - before)

    deployments = kube.items("deployments", "downloader.io/aggregation")
    owners = collections.Counter(
        owner["name"] for d in deployments for owner in d["metadata"].get("ownerReferences") or ()
    )
    assert owners == dict.fromkeys(names, 1)
    assert {d["metadata"]["labels"]["downloader.io/aggregation"] for d in deployments} == set(names)
    assert aggregation_events(kube, "Created") == dict.fromkeys(names, 1)
    assert served.get("POST deployments 201") == len(names), served
    # A create that meets an existing Deployment (409) is by design (read, then patched if need
    # be): a refresh let in just after on.create's POST can look before the watch has shown that
    # Deployment (7-9 of the 20 with a timer per Aggregation; 0-4 since the first-sight create's
    # POST is remembered for the next reconcile). Printed for the record, not asserted.
    print(f"deployment creates answered 409: {served.get('POST deployments 409', 0)}")
