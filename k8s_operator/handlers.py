"""The kopf handlers: each Aggregation is reconciled on change and on a timer, thinly.

A reconcile reads (Redis backlog, the worker Deployment: a watched copy, the API server's
own before a write), calls `planning.plan` and applies the plan (the `aggr:<id>` hash, the
Deployment, the status, events); one at a time per Aggregation. Adoption creates an
Aggregation for every aggregation that exists only in Redis. Blocking clients run in threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import kopf

from downloader.cluster import planning
from downloader.cluster.kube import Cluster, ClusterError
from downloader.config.settings import Settings
from downloader.errors import StoreError
from downloader.observability import metrics
from downloader.store import Store

T = TypeVar("T")
RESOURCE = (planning.GROUP, planning.VERSION, planning.PLURAL)
#: Kubernetes API calls in flight at once, in threads of their own (the client's connection
#: pool is given as many): a burst of new Aggregations waits on the API server, not behind
#: the Redis calls of every refresh in asyncio's few default threads (cores + 4).
KUBE_CALLS_AT_ONCE = 16
#: Timer refreshes running at once. Aggregations created together refresh together, every
#: interval: a thousand at once would queue a new Aggregation's calls behind theirs.
REFRESHES_AT_ONCE = 8


class Reconciler:
    def __init__(self, settings: Settings, db: Store, cluster: Cluster) -> None:
        self.settings = settings
        self.db = db
        self.cluster = cluster
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._kube_threads = concurrent.futures.ThreadPoolExecutor(KUBE_CALLS_AT_ONCE, "kube")
        self._refreshes = asyncio.Semaphore(REFRESHES_AT_ONCE)

    async def reconcile(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        logger: kopf.Logger,
        worker_deployments: kopf.Index[str, dict[str, Any]] | None = None,
        **_: Any,
    ) -> None:
        if body.metadata.get("deletionTimestamp"):
            return  # `retire` owns it now: a last refresh must not unpause it in Redis
        spec = planning.Spec.from_dict(body.spec)
        # One reconcile of an Aggregation at a time: under load its first refresh can come
        # while on.create is still running, and both would create the Deployment.
        async with self._lock(spec.id):
            await self._reconcile(spec, body, patch, logger, worker_deployments)

    async def _reconcile(
        self,
        spec: planning.Spec,
        body: kopf.Body,
        patch: kopf.Patch,
        logger: kopf.Logger,
        index: kopf.Index[str, dict[str, Any]] | None,
    ) -> None:
        name = planning.deployment_name(spec.id)
        backlog, redis_error = await self._backlog(spec)

        def decide(found: Mapping[str, Any] | None) -> tuple[planning.Observed, planning.Plan]:
            observed = self._observe(body, found, backlog, redis_error)
            return observed, planning.plan(
                spec, observed, generation=int(body.metadata.get("generation") or 0)
            )

        # The watched copy of the Deployment spares a GET per refresh. A write is decided on
        # the API server's own copy, as it always was: read it first, or, for a Deployment the
        # watch has not shown, try to create it and read it only if it exists after all.
        found = _indexed(index, name)
        observed, plan = decide(found)
        if found is not None and _differs(found, self._wanted_deployment(spec, plan.replicas)):
            found = await self._kube(self.cluster.read_deployment, name)
            observed, plan = decide(found)
        if not observed.redis_error:
            await asyncio.to_thread(self.db.apply_aggregation, plan.redis_hash, paused=plan.paused)
        created = found is None and await self._create_deployment(spec, body, plan.replicas)
        if not created:
            if found is None:
                found = await self._kube(self.cluster.read_deployment, name)
                observed, plan = decide(found)
            await self._apply_deployment(spec, body, found, plan.replicas)
        metrics.WORKERS.record(spec.id, plan.replicas, observed.ready_replicas)
        if not _contains(body.status, plan.status):  # an unchanged status costs no write
            patch.status.update(plan.status)
        for reason, message in plan.events:
            kopf.info(body, reason=reason, message=message)
        if observed.redis_error:
            metrics.RECONCILE_ERRORS.labels("redis").inc()
            kopf.warn(body, reason="RedisUnavailable", message=observed.redis_error)
            logger.warning("redis unavailable: %s", observed.redis_error)

    async def _kube(self, call: Callable[..., T], *args: Any) -> T:
        """One blocking call of the Kubernetes client, in the threads kept for them."""
        return await asyncio.get_running_loop().run_in_executor(self._kube_threads, call, *args)

    async def refresh(self, **kwargs: Any) -> None:
        """The timer's reconcile, a few at a time: changes (create, update) go first."""
        async with self._refreshes:
            await self.reconcile(**kwargs)

    def _lock(self, aggr_id: str) -> asyncio.Lock:
        """The lock of one aggregation's reconciles; kept only while a reconcile holds it."""
        lock = self._locks.get(aggr_id)
        if lock is None:
            lock = self._locks[aggr_id] = asyncio.Lock()
        return lock

    async def _backlog(self, spec: planning.Spec) -> tuple[tuple[int, int], str]:
        """(queued, in flight) from Redis, and the error text when Redis did not answer."""
        try:
            return await asyncio.to_thread(self.db.backlog, spec.id), ""
        except StoreError as exc:
            return (0, 0), str(exc)

    def _observe(
        self, body: kopf.Body, found: Mapping[str, Any] | None, backlog: tuple[int, int], redis_error: str
    ) -> planning.Observed:
        status = body.status
        pending, in_flight = backlog
        return planning.Observed(
            now=time.time(),
            pending=pending,
            in_flight=in_flight,
            deployment_replicas=None if found is None else int(found["spec"].get("replicas") or 0),
            ready_replicas=0 if found is None else int((found.get("status") or {}).get("readyReplicas") or 0),
            last_activity=planning.parse_time(status.get("lastActivityTime")),
            redis_error=redis_error,
            conditions=tuple(status.get("conditions") or ()),
        )

    def _worker_pod(self) -> planning.WorkerPod:
        s = self.settings
        return planning.WorkerPod(
            image=s.worker_image,
            pull_policy=s.worker_image_pull_policy,
            resources=s.worker_resources,
            env_configmap=s.worker_env_configmap,
            env_secret=s.worker_env_secret,
            service_account=s.worker_service_account,
            tmp_dir=str(s.tmp_dir),
            storage_root=str(s.storage_root),
            storage_claim=s.worker_storage_claim,
            shutdown_grace_seconds=s.shutdown_grace_seconds,
            metrics_port=s.worker_metrics_port,
            host_network=s.worker_host_network,
            node_selector=s.worker_node_selector,
            tolerations=s.worker_tolerations,
            affinity=s.worker_affinity,
            pod_annotations=s.worker_pod_annotations,
            pod_security_context=s.worker_pod_security_context,
            container_security_context=s.worker_container_security_context,
        )

    def _wanted_deployment(self, spec: planning.Spec, replicas: int) -> dict[str, Any]:
        return planning.deployment(spec, self.settings.kube_namespace, replicas, self._worker_pod())

    async def _create_deployment(self, spec: planning.Spec, owner: kopf.Body, replicas: int) -> bool:
        """Create the worker Deployment; False when it exists already."""
        wanted = self._wanted_deployment(spec, replicas)
        kopf.adopt(wanted, owner=owner)  # garbage-collected with its Aggregation
        return bool(await self._kube(self.cluster.create_deployment, wanted))

    async def _apply_deployment(
        self, spec: planning.Spec, owner: kopf.Body, found: Mapping[str, Any] | None, replicas: int
    ) -> None:
        if found is None:
            await self._create_deployment(spec, owner, replicas)
            return
        wanted = self._wanted_deployment(spec, replicas)
        if not _differs(found, wanted):
            return
        if replicas < int(found["spec"].get("replicas") or 0):
            await self._spare_busy_pods(spec, wanted["spec"]["selector"]["matchLabels"])
        # Replicas and the pod template are ours; re-applying them also undoes manual drift.
        patch = {"spec": {"replicas": replicas, "template": wanted["spec"]["template"]}}
        await self._kube(self.cluster.patch_deployment, wanted["metadata"]["name"], patch)

    async def _spare_busy_pods(self, spec: planning.Spec, selector: dict[str, str]) -> None:
        """Before a scale-down, rank the worker pods by their downloads in flight (the
        pod-deletion-cost annotation), so that the idle ones are removed first. A pod that must
        go anyway drains on SIGTERM and gives back what it cannot finish, without an attempt."""
        try:
            downloads = await asyncio.to_thread(self.db.downloads_per_host, spec.id)
        except StoreError:
            return  # the reconcile reports Redis; scaling down blind is what Kubernetes does
        pods = await self._kube(self.cluster.pod_annotations, selector)
        for pod, cost in planning.deletion_costs(pods, downloads).items():
            await self._kube(self.cluster.annotate_pod, pod, {planning.DELETION_COST: cost})

    async def retire(self, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        """The Aggregation is being deleted: pause its jobs in Redis (they stay queued)."""
        aggr_id = str(body.spec.get("id"))
        metrics.WORKERS.forget(aggr_id)
        try:
            await asyncio.to_thread(self.db.retire_aggregation, aggr_id)
        except StoreError as exc:
            raise kopf.TemporaryError(f"redis unavailable: {exc}", delay=10) from exc
        logger.info("aggregation %r paused in Redis; its queued jobs are kept", aggr_id)

    async def adopt_forever(self, stopped: asyncio.Event, logger: logging.Logger) -> None:
        """Create Aggregations for aggregations found only in Redis, every few intervals."""
        while not stopped.is_set():
            try:
                created = await self._kube(self.adopt_once)  # its calls count among the kube ones
                if created:
                    logger.info("adopted %d aggregations found only in Redis", created)
            except (StoreError, ClusterError) as exc:
                logger.warning("adoption round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=self.settings.operator_interval_seconds * 2)

    def adopt_once(self) -> int:
        interval = self.settings.adoption_interval_seconds
        if interval > 0 and self.db.take_adoption_turn(interval):
            self.db.adopt_unregistered()  # the original's queues join the registry first
        in_redis = self.db.registered_aggregations()
        missing = in_redis - self.cluster.aggregation_ids()
        created = 0
        for aggr_id in sorted(missing):
            aggregation = self.db.aggregation(aggr_id)
            body = planning.aggregation_resource(
                aggr_id, aggregation.limit, aggregation.proxy, self.cluster.namespace
            )
            if self.db.is_paused(aggr_id):
                body["spec"]["paused"] = True  # deleted while jobs were queued: stays stopped
            created += self.cluster.create_aggregation(body)
        return created


def register(reconciler: Reconciler, registry: kopf.OperatorRegistry) -> None:
    interval = reconciler.settings.operator_interval_seconds
    reconcile = _counted(reconciler.reconcile)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*RESOURCE, registry=registry)(reconcile)
    # The first refresh waits one interval: on.create has just reconciled a new resource.
    kopf.timer(*RESOURCE, interval=interval, initial_delay=interval, registry=registry, id="refresh")(
        _counted(reconciler.refresh)
    )
    kopf.on.delete(*RESOURCE, registry=registry)(reconciler.retire)
    # handlers get it as `worker_deployments`
    kopf.index(
        "apps", "v1", "deployments", id="worker_deployments", registry=registry,
        labels={planning.AGGREGATION_LABEL: kopf.PRESENT},
    )(index_deployment)  # fmt: skip


def _counted(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """`handler`, counted in the metrics; an escaping error is counted by its cause and
    re-raised for kopf to retry. `wraps` keeps kopf's handler id (and so its progress)."""

    @functools.wraps(handler)
    async def counted(**kwargs: Any) -> None:
        metrics.RECONCILES.inc()
        try:
            await handler(**kwargs)
        except Exception as exc:
            metrics.RECONCILE_ERRORS.labels(_cause(exc)).inc()
            raise

    return counted


def _differs(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether the Deployment `found` needs a write: other replicas, or a pod template short
    of the `wanted` one's."""
    return found["spec"].get("replicas") != wanted["spec"]["replicas"] or not _contains(
        found["spec"]["template"], wanted["spec"]["template"]
    )


def _indexed(index: kopf.Index[str, dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    """The watched copy of the Deployment `name` (see `index_deployment`), if any."""
    stored = None if index is None else index.get(name)
    return next(iter(stored), None) if stored else None


def index_deployment(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, Any]:
    """The worker Deployments by name, as the reconcile reads them: replicas, pod template and
    ready replicas, kept up to date by a watch (kopf indexes them before any handler runs)."""
    return {
        name: {
            "spec": {
                "replicas": spec.get("replicas"),
                "template": copy.deepcopy(dict(spec.get("template") or {})),
            },
            "status": {"readyReplicas": status.get("readyReplicas")},
        }
    }


def _cause(exc: Exception) -> str:
    if isinstance(exc, StoreError):
        return "redis"
    return "kubernetes" if isinstance(exc, ClusterError) else "other"


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether `actual` already holds everything in `wanted` (extra defaults in `actual` are
    fine: the API server fills in fields we never set, and leaves out empty ones). `actual`
    may be one of kopf's read-only views of a body (a Mapping, not a dict)."""
    if actual is None and isinstance(wanted, dict | list) and not wanted:
        return True  # e.g. `envFrom: []`, which the API server does not store
    if isinstance(wanted, dict):
        return isinstance(actual, Mapping) and all(_contains(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)
