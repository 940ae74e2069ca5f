"""The operator's pure helpers: `_contains` (is a write needed?) on kopf's read-only views and
on the empty fields the API server leaves out, `index_deployment` / `aggregation_entry` /
`_indexed` (the watched copies), and the sweep's `due` (which Aggregations, in what order),
its yielding to changes and its going on past a failed refresh. What the real API server
stores and how often the operator calls it: tests/k8s/test_operator_api_calls.py and
tests/k8s/test_operator_sweep.py."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import kopf

from downloader.cluster.kube import ClusterError
from downloader.config.settings import Settings
from downloader.observability import metrics
from downloader.operator.handlers import (
    Changes,
    Index,
    Reconciler,
    _contains,
    _indexed,
    aggregation_entry,
    due,
    index_deployment,
)

CONDITIONS = [{"type": "Ready", "status": "True", "reason": "WorkersReady"}]


def test_contains_reads_kopfs_read_only_view_of_a_status() -> None:
    status = kopf.Body({"status": {"readyWorkers": 1, "conditions": CONDITIONS, "extra": "x"}}).status
    assert not isinstance(status, dict)  # a Mapping view: taking it for "not a dict" wrote every round
    assert _contains(status, {"readyWorkers": 1, "conditions": CONDITIONS})
    assert not _contains(status, {"readyWorkers": 2, "conditions": CONDITIONS})
    assert not _contains(status, {"readyWorkers": 1, "conditions": [{**CONDITIONS[0], "status": "False"}]})
    assert not _contains(kopf.Body({}).status, {"readyWorkers": 1})


def test_contains_takes_an_empty_field_the_api_server_leaves_out_for_the_same() -> None:
    stored = {"name": "worker", "image": "w:1"}  # sent with `envFrom: []`, stored without it
    assert _contains(stored, {"name": "worker", "image": "w:1", "envFrom": [], "nodeSelector": {}})
    assert not _contains(stored, {"name": "worker", "envFrom": [{"configMapRef": {"name": "env"}}]})
    assert not _contains(stored, {"name": "worker", "image": ""})  # an empty string is a value


def test_contains_wants_lists_item_for_item() -> None:
    stored = {"containers": [{"name": "worker", "args": ["a"], "terminationMessagePolicy": "File"}]}
    assert _contains(stored, {"containers": [{"name": "worker", "args": ["a"]}]})
    assert not _contains(stored, {"containers": [{"name": "worker", "args": ["a", "b"]}]})
    assert not _contains(stored, {"containers": [{"name": "worker"}, {"name": "sidecar"}]})


def test_the_watched_copy_of_a_deployment_is_what_the_reconcile_reads() -> None:
    template: dict[str, Any] = {"metadata": {"labels": {"app": "w"}},
                                "spec": {"containers": [{"name": "worker", "image": "w:1"}]}}  # fmt: skip
    body = kopf.Body(
        {
            "metadata": {"name": "downloader-worker-shop", "resourceVersion": "7"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}}, "template": template},
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 3},
        }
    )
    indexed = index_deployment(name="downloader-worker-shop", spec=body.spec, status=body.status)
    copy = {"spec": {"replicas": 2, "template": template}, "status": {"readyReplicas": 1}}
    assert indexed == {"downloader-worker-shop": copy}
    template["spec"]["containers"][0]["image"] = "w:2"  # the body kopf passed on changes later
    assert indexed["downloader-worker-shop"]["spec"]["template"]["spec"]["containers"][0]["image"] == "w:1"
    # kopf's index: each key holds the values of the objects that gave it
    assert _indexed({"downloader-worker-shop": [copy]}, "downloader-worker-shop") is copy  # type: ignore[arg-type]
    assert _indexed({}, "downloader-worker-shop") is None  # type: ignore[arg-type]
    assert _indexed(None, "downloader-worker-shop") is None


def test_a_deployment_without_status_or_template_is_indexed_with_none() -> None:
    body = kopf.Body({"metadata": {"name": "d"}, "spec": {"replicas": 0}})
    assert index_deployment(name="d", spec=body.spec, status=body.status) == {
        "d": {"spec": {"replicas": 0, "template": {}}, "status": {"readyReplicas": None}}
    }


def aggregation(name: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    return {"metadata": meta, "spec": {"id": name}}


def test_a_sweep_refreshes_the_stalest_first_and_skips_the_fresh_and_the_deleted() -> None:
    indexed = {n: aggregation(n) for n in ("old", "older", "fresh", "new", "unseen")}
    indexed["leaving"] = aggregation("leaving", deleting=True)  # `retire` has it
    touched = {"old": 90.0, "older": 80.0, "fresh": 99.0, "new": 97.6, "leaving": 10.0, "gone": 1.0}
    # at 100 with a 5 s interval: what was touched after 97.5 waits for the next sweep
    assert due(indexed, touched, now=100.0, interval=5.0) == ["unseen", "older", "old"]
    assert due(indexed, touched, now=100.0, interval=1.0) == ["unseen", "older", "old", "new", "fresh"]
    assert due({}, touched, now=100.0, interval=5.0) == []
    # the same touch time: by name, so every sweep goes in the same order
    assert due({n: aggregation(n) for n in "cab"}, dict.fromkeys("abc", 0.0), 10.0, 1.0) == ["a", "b", "c"]
    assert due({"x": aggregation("x")}, {"x": -math.inf}, 0.0, 1.0) == ["x"]


def test_the_aggregation_index_keeps_a_copy_of_what_a_refresh_reads() -> None:
    raw = {
        "apiVersion": "downloader.io/v1alpha1",
        "kind": "Aggregation",
        "metadata": {"name": "shop", "namespace": "ns", "uid": "u1", "generation": 3, "labels": {"team": "a"},
                     "annotations": {"downloader.io/last-handled-configuration": "{}"},
                     "managedFields": [{"manager": "kubectl"}], "resourceVersion": "9"},
        "spec": {"id": "shop", "limit": 4},
        "status": {"pending": 1, "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip
    body = kopf.Body(raw)  # type: ignore[arg-type]
    entry = aggregation_entry("shop", body)
    assert entry == {
        "shop": {
            "apiVersion": "downloader.io/v1alpha1",
            "kind": "Aggregation",
            "metadata": {"name": "shop", "namespace": "ns", "uid": "u1", "generation": 3, "labels": {"team": "a"}},
            "spec": {"id": "shop", "limit": 4},
            "status": {"pending": 1, "conditions": [{"type": "Ready", "status": "True"}]},
        }
    }  # fmt: skip
    raw["status"]["conditions"][0]["status"] = "False"  # a later body of kopf's does not reach it
    assert entry["shop"]["status"]["conditions"][0]["status"] == "True"
    # what events and owner references are built from
    assert kopf.build_object_reference(kopf.Body(entry["shop"]))["uid"] == "u1"  # type: ignore[arg-type]
    assert _indexed({"shop": [entry["shop"]]}, "shop") is entry["shop"]  # type: ignore[arg-type]
    deleting = aggregation_entry("shop", {**raw, "metadata": {**raw["metadata"], "deletionTimestamp": "t"}})
    assert deleting["shop"]["metadata"]["deletionTimestamp"] == "t"
    assert aggregation_entry("bare", {"metadata": {"name": "bare"}})["bare"]["status"] == {}


def test_the_sweep_lets_running_changes_go_first_until_its_deadline() -> None:
    async def scenario() -> None:
        changes = Changes()
        loop = asyncio.get_running_loop()
        await changes.settled(deadline=loop.time() + 60)  # nothing runs: at once
        with changes.running():
            waiting = asyncio.create_task(changes.settled(deadline=loop.time() + 60))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not waiting.done()
            await changes.settled(deadline=loop.time())  # its deadline has come: whatever runs
            with changes.running():
                pass  # a second change ending does not release the sweep while the first runs
            for _ in range(5):
                await asyncio.sleep(0)
            assert not waiting.done()
        await waiting

    asyncio.run(scenario())


class Refreshes(Reconciler):
    """The sweep over a real kopf-shaped index, with `refresh` (the Kubernetes and Redis calls)
    recording the names it is given, and failing for one of them."""

    def __init__(self, failing: dict[str, Exception]) -> None:
        super().__init__(Settings(operator_interval_seconds=1.0), db=None, cluster=None)  # type: ignore[arg-type]
        self.failing = failing
        self.refreshed: list[str] = []

    async def refresh(self, name: str, aggregations: Index, worker_deployments: Index) -> None:
        self.refreshed.append(name)
        if name in self.failing:
            raise self.failing[name]


def counted(name: str, cause: str | None = None) -> float:
    value = metrics.REGISTRY.get_sample_value(name, {"cause": cause} if cause else {})
    return value or 0.0


def test_a_failing_refresh_is_counted_and_the_sweep_goes_on_to_the_others() -> None:
    names = [f"aggr-{n:02d}" for n in range(20)]
    index = {name: [aggregation(name)] for name in names}  # kopf's shape: name -> stored values
    reconciler = Refreshes(
        {"aggr-03": ClusterError("patching Deployment: 422"), "aggr-07": ValueError("bug")}
    )
    before = counted("downloader_operator_reconciles_total")
    errors = {c: counted("downloader_operator_reconcile_errors_total", c) for c in ("kubernetes", "other")}

    async def two_sweeps() -> None:
        stopped = asyncio.Event()
        for _ in range(2):  # the failed ones are due again, in the next sweep
            await reconciler.sweep(stopped, index, {})  # type: ignore[arg-type]

    asyncio.run(two_sweeps())
    assert sorted(reconciler.refreshed) == sorted(names * 2)
    assert counted("downloader_operator_reconciles_total") - before == 40
    for cause, was in errors.items():
        assert counted("downloader_operator_reconcile_errors_total", cause) - was == 2


def test_a_stopped_sweep_refreshes_no_more() -> None:
    index = {name: [aggregation(name)] for name in ("a", "b", "c")}
    reconciler = Refreshes({})

    async def stopped_sweep() -> None:
        stopped = asyncio.Event()
        stopped.set()
        await reconciler.sweep(stopped, index, {})  # type: ignore[arg-type]

    asyncio.run(stopped_sweep())
    assert reconciler.refreshed == []
