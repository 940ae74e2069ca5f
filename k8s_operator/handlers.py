"""The kopf handlers: each Aggregation is reconciled on change, and by one periodic sweep, thinly.

A reconcile reads (Redis backlog, the worker Deployment: a watched copy, the API server's
own before a write), calls `planning.plan` and applies the plan (the `aggr:<id>` hash, the
Deployment, the status, events); one at a time per Aggregation. The sweep refreshes every
Aggregation kopf's index holds, each interval (not a kopf timer per Aggregation: at a thousand,
those were half the operator's CPU). A new Aggregation's Deployment is created at first sight,
ahead of kopf's on.create. Adoption creates an Aggregation for every aggregation that exists
only in Redis. Blocking clients run in threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import functools
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeAlias, TypeVar, cast

import kopf

from downloader.cluster import planning
from downloader.cluster.kube import Cluster, ClusterError
from downloader.config.settings import Settings
from downloader.errors import StoreError
from downloader.observability import metrics
from downloader.store import Store

T = TypeVar("T")
RESOURCE = (planning.GROUP, planning.VERSION, planning.PLURAL)
log = logging.getLogger("downloader.operator")
#: Kubernetes API calls in flight at once, in threads of their own (the client's connection
#: pool is given as many): a burst of new Aggregations waits on the API server, not behind
#: the Redis calls of every refresh in asyncio's few default threads (cores + 4).
KUBE_CALLS_AT_ONCE = 16
#: Refreshes the sweep runs at once: a thousand at once would queue a new Aggregation's calls
#: behind theirs. Changes (on.create, on.update, on.resume) are never counted among them.
REFRESHES_AT_ONCE = 8
#: kopf's indexes: the Aggregations (`aggregations`) and the worker Deployments
#: (`worker_deployments`) by name, each a copy of what the reconcile reads.
Index: TypeAlias = kopf.Index[str, dict[str, Any]]


class Reconciler:
    def __init__(self, settings: Settings, db: Store, cluster: Cluster) -> None:
        self.settings = settings
        self.db = db
        self.cluster = cluster
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._kube_threads = concurrent.futures.ThreadPoolExecutor(KUBE_CALLS_AT_ONCE, "kube")
        self._changes = Changes()
        #: When each Aggregation (by name) was first seen or last reconciled: `due` skips fresh ones.
        self._touched: dict[str, float] = {}
        #: The context kopf indexes an Aggregation in: kopf.info / kopf.warn find kopf's event
        #: queue there (set for its handlers only), and the sweep runs in a copy of it.
        self._kopf_context: contextvars.Context | None = None
        self._early: set[asyncio.Task[None]] = set()  # `create_early`s running (a task is kept only weakly)
        #: The Deployments `create_early` made, by Aggregation name, until its next reconcile:
        #: on.create comes before the watch has shown them, and would POST (409) and GET again.
        self._posted: dict[str, dict[str, Any]] = {}

    async def reconcile(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        logger: kopf.Logger,
        worker_deployments: Index | None = None,
        **_: Any,
    ) -> None:
        """on.create, on.update, on.resume: at once, ahead of the sweep; kopf writes the status."""
        if body.metadata.get("deletionTimestamp"):
            return  # `retire` owns it now: a last refresh must not unpause it in Redis
        spec = planning.Spec.from_dict(body.spec)
        # One reconcile of an Aggregation at a time: under load the sweep can come to a new one
        # while on.create is still running, and both would create the Deployment.
        with self._changes.running():
            async with self._lock(spec.id):
                status = await self._reconcile(spec, body, logger, worker_deployments)
                self._touched[body.metadata.name] = time.monotonic()
        if status:
            patch.status.update(status)

    async def refresh(self, name: str, aggregations: Index, worker_deployments: Index) -> None:
        """The sweep's reconcile of one Aggregation, from kopf's latest copy of it. What kopf does
        for a handler is done here: the status is written (only when it changed), errors raised."""
        body = _indexed(aggregations, name)
        if body is None:
            return
        async with self._lock(str(body["spec"].get("id"))):
            body = _indexed(aggregations, name)  # a delete may have come while the lock was held
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            try:
                found = kopf.Body(cast(kopf.RawBody, body))
                status = await self._reconcile(
                    planning.Spec.from_dict(found.spec), found, log, worker_deployments
                )
                if status:
                    await self._kube(self.cluster.patch_aggregation_status, name, status)
            finally:
                self._touched[name] = time.monotonic()

    async def _reconcile(
        self, spec: planning.Spec, body: kopf.Body, logger: kopf.Logger, index: Index | None
    ) -> dict[str, Any] | None:
        """Observe, plan and apply; the status to write, None when the stored one holds it."""
        name = planning.deployment_name(spec.id)
        backlog, redis_error = await self._backlog(spec)

        def decide(found: Mapping[str, Any] | None) -> tuple[planning.Observed, planning.Plan]:
            observed = self._observe(body, found, backlog, redis_error)
            return observed, planning.plan(
                spec, observed, generation=int(body.metadata.get("generation") or 0)
            )

        # The watched copy of the Deployment spares a GET per refresh (or, until the watch shows
        # it, the one `create_early` posted). A write is decided on the API server's own copy,
        # as it always was: read it first, or, for a Deployment the watch has not shown, try to
        # create it and read it only if it exists after all.
        posted = self._posted.pop(body.metadata.name, None)
        found = _indexed(index, name) or posted
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
        for reason, message in plan.events:
            kopf.info(body, reason=reason, message=message)
        if observed.redis_error:
            metrics.RECONCILE_ERRORS.labels("redis").inc()
            kopf.warn(body, reason="RedisUnavailable", message=observed.redis_error)
            logger.warning("aggregation %r: redis unavailable: %s", spec.id, observed.redis_error)
        # an unchanged status costs no write
        return None if _contains(body.status, plan.status) else plan.status

    async def _kube(self, call: Callable[..., T], *args: Any) -> T:
        """One blocking call of the Kubernetes client, in the threads kept for them."""
        return await asyncio.get_running_loop().run_in_executor(self._kube_threads, call, *args)

    async def sweep_forever(
        self, stopped: asyncio.Event, aggregations: Index, worker_deployments: Index
    ) -> None:
        """A sweep every interval, the first one interval after start (on.resume has just
        reconciled every Aggregation), until `stopped`. A failed sweep is logged: the next one comes."""
        interval = self.settings.operator_interval_seconds
        while not await _stopped_within(stopped, interval):
            if self._kopf_context is None:
                continue  # no Aggregation indexed yet
            started = time.monotonic()
            sweep = self.sweep(stopped, aggregations, worker_deployments)
            try:
                await asyncio.create_task(sweep, context=self._kopf_context.copy())
            except Exception:
                log.exception("sweep failed; the next one comes in %gs", interval)
            metrics.SWEEP_SECONDS.observe(time.monotonic() - started)

    async def sweep(self, stopped: asyncio.Event, aggregations: Index, worker_deployments: Index) -> None:
        """Refresh the Aggregations `due`, stalest first, REFRESHES_AT_ONCE at a time; while
        changes run they go first, for up to one interval per sweep."""
        started = time.monotonic()
        indexed = dict(_all_indexed(aggregations))
        for gone in self._touched.keys() - indexed.keys():
            del self._touched[gone]
        for gone in self._posted.keys() - indexed.keys():
            del self._posted[gone]  # deleted before its on.create
        names = iter(due(indexed, self._touched, started, self.settings.operator_interval_seconds))
        deadline = started + self.settings.operator_interval_seconds

        async def refresher() -> None:
            for name in names:  # one iterator: each name to one refresher
                await self._changes.settled(deadline)
                if stopped.is_set():
                    return
                await self._refresh_counted(name, aggregations, worker_deployments)

        await asyncio.gather(*(refresher() for _ in range(REFRESHES_AT_ONCE)))

    async def _refresh_counted(self, name: str, aggregations: Index, worker_deployments: Index) -> None:
        """`refresh`, counted as a reconcile; a failure is counted by its cause, logged, and
        left to the next sweep (as kopf retried a timer's)."""
        metrics.RECONCILES.inc()
        try:
            await self.refresh(name, aggregations, worker_deployments)
        except Exception as exc:
            cause = _cause(exc)
            metrics.RECONCILE_ERRORS.labels(cause).inc()
            log.warning("refreshing Aggregation %s failed, again next sweep: %s", name, exc,
                        exc_info=cause == "other")  # fmt: skip

    async def index_aggregation(self, name: str, body: kopf.Body, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """kopf's index of the Aggregations (see `aggregation_entry`): what the sweep goes
        over. Where the sweep takes kopf's context from, too; and where a new Aggregation is
        first seen: its Deployment is created from here (`create_early`)."""
        if self._kopf_context is None:
            self._kopf_context = contextvars.copy_context()
        entry = aggregation_entry(name, body)
        if name not in self._touched:
            self._touched[name] = time.monotonic()  # and its first refresh waits
            if not body.get("status") and not body.metadata.get("deletionTimestamp"):
                early = self.create_early(entry[name], kwargs["aggregations"], kwargs["worker_deployments"])
                task = asyncio.create_task(early)
                self._early.add(task)
                task.add_done_callback(self._early.discard)
        return entry

    async def create_early(
        self, seen: dict[str, Any], aggregations: Index, worker_deployments: Index
    ) -> None:
        """The Deployment of a new Aggregation at first sight: kopf runs on.create only after a
        round trip that adds its finalizer. Only the Deployment (owned by the Aggregation: gone
        with it) and its Created event; Redis and the status wait for on.create, which an
        Aggregation deleted before it has its finalizer never gets. Any failure: on.create's."""
        name = seen["metadata"]["name"]
        with self._changes.running():
            try:
                spec = planning.Spec.from_dict(seen["spec"])
                async with self._lock(spec.id):
                    # kopf's latest copy, once it holds one (not before this handler returns)
                    body = _indexed(aggregations, name) or seen
                    await self._create_early(spec, body, worker_deployments)
            except (StoreError, ClusterError) as exc:
                log.info("no early Deployment for Aggregation %s (on.create makes it): %s", name, exc)
            except Exception:
                log.exception("no early Deployment for Aggregation %s (on.create makes it)", name)

    async def _create_early(
        self, spec: planning.Spec, body: dict[str, Any], worker_deployments: Index
    ) -> None:
        if body.get("status") or body["metadata"].get("deletionTimestamp"):
            return  # handled meanwhile, or going
        if _indexed(worker_deployments, planning.deployment_name(spec.id)) is not None:
            return
        backlog, redis_error = await self._backlog(spec)
        if redis_error:
            return  # on.create reports it
        owner = kopf.Body(cast(kopf.RawBody, body))
        plan = planning.plan(spec, self._observe(owner, None, backlog, ""))
        if await self._create_deployment(spec, owner, plan.replicas):
            self._posted[owner.metadata.name] = self._wanted_deployment(spec, plan.replicas)
            for reason, message in plan.events:
                kopf.info(owner, reason=reason, message=message)

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
        """The Aggregation is being deleted: pause its jobs in Redis (they stay queued), after
        any refresh of it in progress (which would unpause them)."""
        aggr_id = str(body.spec.get("id"))
        metrics.WORKERS.forget(aggr_id)
        self._touched.pop(body.metadata.name, None)
        try:
            async with self._lock(aggr_id):
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
    """The handlers. The sweep (`Reconciler.sweep_forever`) is started by the operator's startup
    handler, which gets both indexes."""
    reconcile = _counted(reconciler.reconcile)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*RESOURCE, registry=registry)(reconcile)
    kopf.on.delete(*RESOURCE, registry=registry)(reconciler.retire)
    # Handlers get them as `aggregations` and `worker_deployments`. Async, as a sync one runs
    # in a thread for every event.
    kopf.index(*RESOURCE, id="aggregations", registry=registry)(reconciler.index_aggregation)
    kopf.index(
        "apps", "v1", "deployments", id="worker_deployments", registry=registry,
        labels={planning.AGGREGATION_LABEL: kopf.PRESENT},
    )(_index_deployment)  # fmt: skip


class Changes:
    """The reconciles of changes (on.create, on.update, on.resume) running now: the sweep lets
    them go first, as a new Aggregation's Deployment is the one somebody waits for."""

    def __init__(self) -> None:
        self._running = 0
        self._none = asyncio.Event()
        self._none.set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._running += 1
        self._none.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._none.set()

    async def settled(self, deadline: float) -> None:
        """Once no change runs, or at `deadline` (monotonic) whatever runs."""
        if self._none.is_set() or time.monotonic() >= deadline:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none.wait(), max(0.0, deadline - time.monotonic()))


def due(
    aggregations: Mapping[str, Mapping[str, Any]], touched: Mapping[str, float], now: float, interval: float
) -> list[str]:
    """The Aggregations (by name) a sweep at `now` refreshes, stalest first: not those being
    deleted (`retire` has them), nor those seen or reconciled within the last half `interval`
    (a new one was just created; a change was just reconciled)."""
    fresh_since = now - interval / 2
    stale = sorted(
        (touched.get(name, -math.inf), name)
        for name, body in aggregations.items()
        if not (body.get("metadata") or {}).get("deletionTimestamp")
        and touched.get(name, -math.inf) <= fresh_since
    )
    return [name for _, name in stale]


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


def _indexed(index: Index | None, name: str) -> dict[str, Any] | None:
    """The watched copy of the object `name` (see `index_deployment`, `aggregation_entry`), if any."""
    stored = None if index is None else index.get(name)
    return next(iter(stored), None) if stored else None


def _all_indexed(index: Index) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, stored in index.items():
        for body in stored:
            yield name, body
            break


async def _stopped_within(stopped: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), timeout=seconds)
    return stopped.is_set()


def aggregation_entry(name: str, body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The Aggregations by name, as a refresh reads them: spec, status, and the metadata that
    events, owner references (kopf.adopt: also the labels) and the deletion check need; a
    copy, kept up to date by kopf's watch."""
    meta = body.get("metadata") or {}
    kept = ("name", "namespace", "uid", "generation", "labels", "deletionTimestamp")
    return {
        name: copy.deepcopy(
            {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": {key: meta[key] for key in kept if meta.get(key) is not None},
                "spec": dict(body.get("spec") or {}),
                "status": dict(body.get("status") or {}),
            }
        )
    }


async def _index_deployment(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, Any]:
    return index_deployment(name, spec, status)


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
