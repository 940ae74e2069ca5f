"""The operator's sweep on a real control plane: every interval it refreshes each Aggregation
from Redis (no Kubernetes change needed), posts its events, writes its status, and goes on
past an Aggregation whose refresh fails. Pure parts of the sweep: tests/unit/test_operator_helpers.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from support.kubetools import Kube, aggregation_doc, wait_for
from support.operator_proc import OperatorProcess

pytestmark = pytest.mark.k8s


def status(kube: Kube, name: str) -> dict[str, Any]:
    return dict((kube.aggregation(name) or {}).get("status") or {})


def replicas(kube: Kube, name: str) -> int | None:
    deployment = kube.deployment(name)
    return None if deployment is None else int(deployment["spec"].get("replicas") or 0)


def scaled_events(kube: Kube, name: str) -> list[str]:
    return sorted(e["message"] for e in kube.items("events")
                  if e["reason"] == "Scaled" and e["involvedObject"]["name"] == name)  # fmt: skip


def test_the_sweep_follows_a_changed_backlog_into_status_replicas_and_events(
    operator: OperatorProcess, kube: Kube, rdb: redis.Redis, tmp_path: Path
) -> None:
    """Nothing changes in Kubernetes, only the Redis backlog: the sweep alone scales the
    Deployment up and down, writes the status and posts a Scaled event for each."""
    kube.apply(aggregation_doc("tide", limit=64, workerConcurrency=8, maxWorkers=5), tmp_path)
    wait_for(lambda: replicas(kube, "tide") == 0 and status(kube, "tide").get("pending") == 0, 30,
             "the idle Aggregation's Deployment (0 replicas) and status")  # fmt: skip
    sweeps = operator.sweeps()
    rdb.zadd("jobs:tide", {f"job{i:02d}": 1 for i in range(30)})  # ceil(30 / 8) = 4 workers
    wait_for(lambda: replicas(kube, "tide") == 4, 30, "4 workers for 30 queued jobs")
    wait_for(lambda: (s := status(kube, "tide")).get("pending") == 30 and s.get("workers") == 4, 30,
             "the status saying 30 pending, 4 workers")  # fmt: skip
    rdb.zrem("jobs:tide", *[f"job{i:02d}" for i in range(20)])  # 10 left: ceil(10 / 8) = 2 workers
    wait_for(lambda: replicas(kube, "tide") == 2, 30, "2 workers for 10 queued jobs")
    wait_for(lambda: status(kube, "tide").get("pending") == 10, 30, "the status saying 10 pending")
    assert operator.sweeps() > sweeps
    messages = wait_for(lambda: (m := scaled_events(kube, "tide")) and len(m) == 2 and m, 30,
                        "a Scaled event for each change")  # fmt: skip
    assert messages == [
        "workers 0 -> 4: 30 jobs queued or in flight",
        "workers 4 -> 2: 10 jobs queued or in flight",
    ]


def test_one_failing_aggregation_does_not_stop_the_sweep_for_the_others(
    operator: OperatorProcess, kube: Kube, rdb: redis.Redis, tmp_path: Path
) -> None:
    """A ResourceQuota of one Deployment: `blocked`'s Deployment is refused (403), its every
    refresh fails (counted, logged), and `steady` is still refreshed: the sweep goes on. With
    the quota gone, the next sweep creates `blocked`'s Deployment (kopf's own retry of the
    failed on.create is a minute away)."""
    kube.apply(aggregation_doc("steady", limit=16, workerConcurrency=8), tmp_path)
    wait_for(lambda: replicas(kube, "steady") == 0, 30, "steady's Deployment")
    kube.run("create", "quota", "one-deployment", "--hard=count/deployments.apps=1")
    wait_for(lambda: ((kube.get("resourcequota", "one-deployment") or {}).get("status") or {})
             .get("used", {}).get("count/deployments.apps") == "1", 30, "the quota counting steady's")  # fmt: skip
    failed = operator.errors("kubernetes")
    kube.apply(aggregation_doc("blocked"), tmp_path)
    wait_for(lambda: operator.errors("kubernetes") >= failed + 3, 30, "blocked's refreshes failing")
    rdb.zadd("jobs:steady", {f"job{i:02d}": 1 for i in range(16)})  # ceil(16 / 8) = 2 workers
    wait_for(lambda: replicas(kube, "steady") == 2, 30, "steady scaled by the sweep meanwhile")
    wait_for(lambda: status(kube, "steady").get("pending") == 16, 30, "steady's status refreshed meanwhile")
    failing = operator.errors("kubernetes")
    wait_for(lambda: operator.errors("kubernetes") > failing, 30, "blocked's refreshes still tried")
    assert replicas(kube, "blocked") is None
    assert "refreshing Aggregation blocked failed, again next sweep" in operator.proc.output()

    kube.run("delete", "quota", "one-deployment")
    wait_for(lambda: replicas(kube, "blocked") == 0, 30, "blocked's Deployment, once allowed")
    wait_for(lambda: status(kube, "blocked").get("workers") == 0, 30, "blocked's status")
