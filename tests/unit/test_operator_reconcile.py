"""The operator's reconcile against a real Redis, with the Kubernetes side recorded: what it
reads and writes per Aggregation. A refresh with nothing to change costs no API call (the
watched copy of the Deployment, as the API server stores it, matches; the status matches),
anything to write is decided on the API server's own copy, and concurrent reconciles of one
new Aggregation create its Deployment once.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting  # kopf's event queue, to see the events posted

from downloader.cluster import planning
from downloader.config.settings import Settings
from downloader.operator.handlers import Reconciler, index_deployment
from downloader.store import Store

NAMESPACE = "ns"
LOG = logging.getLogger("test")


class _Cluster:
    """The API server's worker Deployments, as it stores them; every call is recorded."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def read_deployment(self, name: str) -> dict[str, Any] | None:
        self.calls.append(("read", name))
        return copy.deepcopy(self.stored.get(name))

    def create_deployment(self, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if name in self.stored:
            self.calls.append(("create: exists", name))
            return False
        self.calls.append(("create", name))
        self.stored[name] = as_stored(body)
        return True

    def patch_deployment(self, name: str, patch: dict[str, Any]) -> None:
        self.calls.append(("patch", name))
        self.stored[name]["spec"].update(copy.deepcopy(patch["spec"]))


def as_stored(body: dict[str, Any]) -> dict[str, Any]:
    """What the API server keeps of a Deployment we send: empty lists left out, defaults added."""
    stored = copy.deepcopy(body)
    container = stored["spec"]["template"]["spec"]["containers"][0]
    if not container.get("envFrom"):
        container.pop("envFrom", None)
    container["terminationMessagePolicy"] = "File"
    for env in container["env"]:
        if "valueFrom" in env:
            env["valueFrom"]["fieldRef"]["apiVersion"] = "v1"
    stored["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    stored["status"] = {"readyReplicas": 1}
    return stored


def watched(cluster: _Cluster) -> dict[str, list[dict[str, Any]]]:
    """kopf's index of the stored Deployments, as `index_deployment` fills it."""
    index: dict[str, list[dict[str, Any]]] = {}
    for name, d in cluster.stored.items():
        for key, value in index_deployment(name=name, spec=d["spec"], status=d["status"]).items():
            index.setdefault(key, []).append(value)
    return index


def aggregation(status: dict[str, Any] | None = None) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": planning.API_VERSION,
            "kind": planning.KIND,
            "metadata": {"name": "shop", "namespace": NAMESPACE, "uid": "u-1", "generation": 1},
            "spec": {"id": "shop", "limit": 4},
            "status": status or {},
        }
    )


@pytest.fixture
def events() -> Iterator[asyncio.Queue[Any]]:
    """The events the handlers post (kopf's queue, as the operator sets it up)."""
    settings = posting.settings_var.set(kopf.OperatorSettings())
    queue: asyncio.Queue[Any] = asyncio.Queue()
    queue_var = posting.event_queue_var.set(queue)
    yield queue
    posting.event_queue_var.reset(queue_var)
    posting.settings_var.reset(settings)


@pytest.fixture
def reconciler(redis_url: str) -> Iterator[Reconciler]:
    settings = Settings(redis_url=redis_url, kube_namespace=NAMESPACE, worker_image="w:1")
    db = Store.from_settings(settings)
    db.redis.zadd("jobs:shop", {"job1": 1.0})  # backlog 1: one worker wanted
    yield Reconciler(settings, db, _Cluster())  # type: ignore[arg-type]
    db.close()


def reconcile(r: Reconciler, body: kopf.Body, index: Any) -> kopf.Patch:
    """One reconcile as kopf runs it, in the loop its event queue belongs to."""
    patch = kopf.Patch()

    async def run() -> None:
        loop_var = posting.event_queue_loop_var.set(asyncio.get_running_loop())
        try:
            await r.reconcile(body=body, patch=patch, logger=LOG, worker_deployments=index)
        finally:
            posting.event_queue_loop_var.reset(loop_var)

    asyncio.run(run())
    return patch


def test_a_refresh_with_nothing_to_change_calls_no_kubernetes_api(
    reconciler: Reconciler, events: asyncio.Queue[Any]
) -> None:
    cluster: _Cluster = reconciler.cluster  # type: ignore[assignment]
    first = reconcile(reconciler, aggregation(), index={})
    assert cluster.calls == [("create", "downloader-worker-shop")]  # no GET before it
    assert [e.reason for e in drain(events)] == ["Created"]
    cluster.calls.clear()
    # The refreshes see the Deployment as the API server stores it (Ready now), and the status
    # the previous reconcile wrote.
    second = reconcile(reconciler, aggregation(first["status"]), index=watched(cluster))
    assert second["status"]["readyWorkers"] == 1
    third = reconcile(reconciler, aggregation(second["status"]), index=watched(cluster))
    assert cluster.calls == []  # no GET, no no-op PATCH of the Deployment
    assert "status" not in third  # no no-op PATCH of the status either
    assert drain(events) == []


def test_a_change_is_decided_on_the_api_servers_copy(
    reconciler: Reconciler, events: asyncio.Queue[Any]
) -> None:
    cluster: _Cluster = reconciler.cluster  # type: ignore[assignment]
    reconcile(reconciler, aggregation(), index={})
    drain(events)
    cluster.stored["downloader-worker-shop"]["spec"]["replicas"] = 0  # scaled down by hand, and watched
    index = watched(cluster)
    cluster.calls.clear()
    reconcile(reconciler, aggregation(), index=index)
    assert cluster.calls == [("read", "downloader-worker-shop"), ("patch", "downloader-worker-shop")]
    assert cluster.stored["downloader-worker-shop"]["spec"]["replicas"] == 1
    assert [e.reason for e in drain(events)] == ["Scaled"]
    # A watched copy that lags behind (still 0) is read again and found right: nothing to do.
    cluster.calls.clear()
    reconcile(reconciler, aggregation(), index=index)
    assert cluster.calls == [("read", "downloader-worker-shop")]
    assert drain(events) == []


def test_concurrent_reconciles_of_a_new_aggregation_create_its_deployment_once(
    reconciler: Reconciler, events: asyncio.Queue[Any]
) -> None:
    """on.create and an early first refresh, with the watch not yet showing the Deployment."""
    cluster: _Cluster = reconciler.cluster  # type: ignore[assignment]

    async def both() -> None:
        loop_var = posting.event_queue_loop_var.set(asyncio.get_running_loop())
        try:
            await asyncio.gather(
                *(
                    reconciler.reconcile(
                        body=aggregation(), patch=kopf.Patch(), logger=LOG, worker_deployments={}
                    )
                    for _ in range(2)
                )
            )
        finally:
            posting.event_queue_loop_var.reset(loop_var)

    asyncio.run(both())
    # the second, after the first: its POST finds the Deployment, which it then reads
    assert cluster.calls == [
        ("create", "downloader-worker-shop"),
        ("create: exists", "downloader-worker-shop"),
        ("read", "downloader-worker-shop"),
    ]
    assert [e.reason for e in drain(events)] == ["Created"]


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
