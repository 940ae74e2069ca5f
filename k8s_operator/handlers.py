"""The kopf handlers: each Aggregation is reconciled on change and on a timer, thinly.

A reconcile reads (Redis backlog, the worker Deployment), calls `planning.plan` and applies
the plan (the `aggr:<id>` hash, the Deployment, the status, events). Adoption creates an
Aggregation for every aggregation that exists only in Redis. Blocking clients run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from downloader.cluster import planning
from downloader.cluster.kube import Cluster, ClusterError
from downloader.config.settings import Settings
from downloader.errors import StoreError
from downloader.observability import metrics
from downloader.store import Store

RESOURCE = (planning.GROUP, planning.VERSION, planning.PLURAL)


class Reconciler:
    def __init__(self, settings: Settings, db: Store, cluster: Cluster) -> None:
        self.settings = settings
        self.db = db
        self.cluster = cluster

    async def reconcile(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        if body.metadata.get("deletionTimestamp"):
            return  # `retire` owns it now: a last refresh must not unpause it in Redis
        spec = planning.Spec.from_dict(body.spec)
        found = await asyncio.to_thread(self.cluster.read_deployment, planning.deployment_name(spec.id))
        observed = await self._observe(spec, body, found)
        plan = planning.plan(spec, observed, generation=int(body.metadata.get("generation") or 0))
        metrics.WORKERS.record(spec.id, plan.replicas, observed.ready_replicas)
        if not observed.redis_error:
            await asyncio.to_thread(self.db.apply_aggregation, plan.redis_hash, paused=plan.paused)
        await self._apply_deployment(spec, body, found, plan.replicas)
        if not _contains(body.status, plan.status):  # an unchanged status costs no write
            patch.status.update(plan.status)
        for reason, message in plan.events:
            kopf.info(body, reason=reason, message=message)
        if observed.redis_error:
            metrics.RECONCILE_ERRORS.labels("redis").inc()
            kopf.warn(body, reason="RedisUnavailable", message=observed.redis_error)
            logger.warning("redis unavailable: %s", observed.redis_error)

    async def _observe(
        self, spec: planning.Spec, body: kopf.Body, found: dict[str, Any] | None
    ) -> planning.Observed:
        status = body.status
        pending = in_flight = 0
        redis_error = ""
        try:
            pending, in_flight = await asyncio.to_thread(self.db.backlog, spec.id)
        except StoreError as exc:
            redis_error = str(exc)
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

    async def _apply_deployment(
        self, spec: planning.Spec, owner: kopf.Body, found: dict[str, Any] | None, replicas: int
    ) -> None:
        s = self.settings
        pod = planning.WorkerPod(
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
        wanted = planning.deployment(spec, s.kube_namespace, replicas, pod)
        if found is None:
            kopf.adopt(wanted, owner=owner)  # garbage-collected with its Aggregation
            await asyncio.to_thread(self.cluster.create_deployment, wanted)
            return
        if found["spec"].get("replicas") == replicas and _contains(
            found["spec"]["template"], wanted["spec"]["template"]
        ):
            return
        if replicas < int(found["spec"].get("replicas") or 0):
            await self._spare_busy_pods(spec, wanted["spec"]["selector"]["matchLabels"])
        # Replicas and the pod template are ours; re-applying them also undoes manual drift.
        patch = {"spec": {"replicas": replicas, "template": wanted["spec"]["template"]}}
        await asyncio.to_thread(self.cluster.patch_deployment, wanted["metadata"]["name"], patch)

    async def _spare_busy_pods(self, spec: planning.Spec, selector: dict[str, str]) -> None:
        """Before a scale-down, rank the worker pods by their downloads in flight (the
        pod-deletion-cost annotation), so that the idle ones are removed first. A pod that must
        go anyway drains on SIGTERM and gives back what it cannot finish, without an attempt."""
        try:
            downloads = await asyncio.to_thread(self.db.downloads_per_host, spec.id)
        except StoreError:
            return  # the reconcile reports Redis; scaling down blind is what Kubernetes does
        pods = await asyncio.to_thread(self.cluster.pod_annotations, selector)
        for pod, cost in planning.deletion_costs(pods, downloads).items():
            await asyncio.to_thread(self.cluster.annotate_pod, pod, {planning.DELETION_COST: cost})

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
                created = await asyncio.to_thread(self.adopt_once)
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
        reconcile
    )
    kopf.on.delete(*RESOURCE, registry=registry)(reconciler.retire)


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


def _cause(exc: Exception) -> str:
    if isinstance(exc, StoreError):
        return "redis"
    return "kubernetes" if isinstance(exc, ClusterError) else "other"


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether `actual` already holds everything in `wanted` (extra defaults in `actual` are
    fine: the API server fills in fields we never set)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(_contains(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)
