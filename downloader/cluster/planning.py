"""What the operator should make of one Aggregation: pure functions over plain data.

`plan(spec, observed)` turns an Aggregation's spec and what was observed (Redis backlog,
the worker Deployment, the clock) into a `Plan`: worker replicas, the `aggr:<id>` hash,
the status with its conditions, and the events worth posting. The kopf handlers only read,
call `plan` and apply; tests call `plan` with dicts. Names of the objects live here too.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

GROUP = "downloader.io"
VERSION = "v1alpha1"
PLURAL = "aggregations"
KIND = "Aggregation"
API_VERSION = f"{GROUP}/{VERSION}"

#: Label on every worker Deployment and pod: the Aggregation's object name.
AGGREGATION_LABEL = "downloader.io/aggregation"
#: Annotation holding the exact aggregation id (object names may have had to change).
ID_ANNOTATION = "downloader.io/aggregation-id"

#: Room left in a 63-character label value or name after our prefixes and suffixes.
NAME_MAX = 45
WORKER_PREFIX = "downloader-worker-"

DEFAULTS: dict[str, Any] = {
    "limit": 4,
    "proxy": "",
    "workerConcurrency": 16,
    "maxWorkers": 10,
    "idleSeconds": 300,
    "paused": False,
}


_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def resource_name(aggr_id: str) -> str:
    """A DNS-1123 subdomain name for an aggregation id (host names such as `shop.example.com`
    stay as they are); a short hash is added when characters had to change (or the id was
    too long), so two ids never share a name."""
    if len(aggr_id) <= NAME_MAX and _SUBDOMAIN.fullmatch(aggr_id):
        return aggr_id
    cleaned = re.sub(r"[^a-z0-9-]+", "-", aggr_id.lower()).strip("-")
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    digest = hashlib.sha256(aggr_id.encode("utf-8")).hexdigest()[:8]
    stem = cleaned[: NAME_MAX - 9].strip("-") or "aggr"
    return f"{stem}-{digest}"


def deployment_name(aggr_id: str) -> str:
    return WORKER_PREFIX + resource_name(aggr_id)


@dataclasses.dataclass(frozen=True)
class Spec:
    id: str
    limit: int
    proxy: str
    worker_concurrency: int
    max_workers: int
    idle_seconds: int
    paused: bool

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Spec:
        get = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
        return cls(
            id=str(get["id"]),
            limit=max(1, int(get["limit"])),
            proxy=str(get["proxy"] or ""),
            worker_concurrency=max(1, int(get["workerConcurrency"])),
            max_workers=max(1, int(get["maxWorkers"])),
            idle_seconds=max(0, int(get["idleSeconds"])),
            paused=bool(get["paused"]),
        )

    @property
    def worker_cap(self) -> int:
        """Never more pods than the limit can keep busy, nor than maxWorkers."""
        return max(1, min(self.max_workers, math.ceil(self.limit / self.worker_concurrency)))


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the operator saw. `deployment_replicas` is None when there is no Deployment."""

    now: float
    pending: int = 0
    in_flight: int = 0
    deployment_replicas: int | None = None
    ready_replicas: int = 0
    last_activity: float | None = None
    redis_error: str = ""
    conditions: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
    replicas: int
    redis_hash: dict[str, str]
    paused: bool
    status: dict[str, Any]
    events: tuple[tuple[str, str], ...]


def plan(spec: Spec, observed: Observed, generation: int = 0) -> Plan:
    replicas, why = desired_replicas(spec, observed)
    busy = observed.pending + observed.in_flight > 0
    last_activity = observed.last_activity
    # Refreshed coarsely: a status that changes every round would be a write every round.
    if busy and (last_activity is None or observed.now - last_activity >= activity_granularity(spec)):
        last_activity = observed.now
    conditions = _conditions(spec, observed, replicas, why)
    status: dict[str, Any] = {
        "pending": observed.pending,
        "inFlight": observed.in_flight,
        "workers": replicas,
        "readyWorkers": observed.ready_replicas,
        "limit": spec.limit,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    if last_activity is not None:
        status["lastActivityTime"] = _iso(last_activity)
    events: list[tuple[str, str]] = []
    if observed.deployment_replicas is not None and observed.deployment_replicas != replicas:
        events.append(("Scaled", f"workers {observed.deployment_replicas} -> {replicas}: {why}"))
    elif observed.deployment_replicas is None:
        events.append(("Created", f"worker Deployment with {replicas} replicas: {why}"))
    return Plan(
        replicas=replicas,
        redis_hash={"ID": spec.id, "Limit": str(spec.limit), "Proxy": spec.proxy},
        paused=spec.paused,
        status=status,
        events=tuple(events),
    )


def activity_granularity(spec: Spec) -> float:
    """How stale `lastActivityTime` may get while busy: 30 s, or less for short idleSeconds
    (scale-to-zero then comes at most this much early)."""
    return min(30.0, spec.idle_seconds / 4)


def desired_replicas(spec: Spec, observed: Observed) -> tuple[int, str]:
    """Worker pods wanted now, and why (in words, for events and conditions)."""
    if spec.paused:
        return 0, "paused"
    work = observed.pending + observed.in_flight
    if work == 0:
        idle_for = None if observed.last_activity is None else observed.now - observed.last_activity
        if idle_for is None or idle_for >= spec.idle_seconds:
            return 0, "idle"
        # Recently busy: keep the pods we have (at least one) until idleSeconds pass.
        return max(1, min(observed.deployment_replicas or 1, spec.worker_cap)), "recently active"
    needed = math.ceil(work / spec.worker_concurrency)
    return max(1, min(needed, spec.worker_cap)), f"{work} jobs queued or in flight"


def _conditions(spec: Spec, observed: Observed, replicas: int, why: str) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in observed.conditions}
    ready = replicas == 0 or (
        observed.deployment_replicas is not None and observed.ready_replicas >= replicas
    )
    if replicas == 0:
        ready_reason, ready_message = "ScaledToZero", f"no workers needed ({why})"
    elif ready:
        ready_reason, ready_message = "WorkersReady", f"{observed.ready_replicas} of {replicas} workers ready"
    else:
        ready_reason, ready_message = (
            "WorkersStarting",
            f"{observed.ready_replicas} of {replicas} workers ready",
        )
    busy = observed.pending + observed.in_flight > 0
    if spec.paused:
        active = ("False", "Paused", "spec.paused is true: no job is claimed")
    elif busy:
        active = ("True", "Working", f"{observed.pending} queued, {observed.in_flight} in flight")
    else:
        active = ("False", "Idle", "no queued or running job")
    if observed.redis_error:
        degraded = ("True", "RedisUnavailable", observed.redis_error)
    else:
        degraded = ("False", "AsExpected", "")
    now = _iso(observed.now)
    wanted = [
        ("Ready", "True" if ready else "False", ready_reason, ready_message),
        ("Active", *active),
        ("Degraded", *degraded),
    ]
    out = []
    for kind, state, reason, message in wanted:
        old = previous.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == state else now
        out.append(
            {
                "type": kind,
                "status": state,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or now,
            }
        )
    return out


#: The images' working directory: relative settings paths resolve against it.
IMAGE_WORKDIR = "/data"


def in_image(path: str) -> str:
    return str(posixpath.join(IMAGE_WORKDIR, path))


#: The worker pod's securityContext unless the chart's worker.podSecurityContext says otherwise
#: (DOWNLOADER_WORKER_POD_SECURITY_CONTEXT): the image's non-root user, the runtime's seccomp.
WORKER_POD_SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: The worker container's securityContext unless worker.containerSecurityContext says otherwise
#: (DOWNLOADER_WORKER_CONTAINER_SECURITY_CONTEXT): it writes only to its volumes.
WORKER_CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


@dataclasses.dataclass(frozen=True)
class WorkerPod:
    """How the operator's settings (the chart's `worker.*` values) shape every worker pod."""

    image: str
    pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    env_configmap: str = ""
    env_secret: str = ""
    service_account: str = ""
    tmp_dir: str = "/data/tmp"
    storage_root: str = "/data/files"
    #: PersistentVolumeClaim shared with the notifier (filesystem storage); "" = emptyDir.
    storage_claim: str = ""
    #: /metrics of each worker (container port `metrics`, scraped by the chart's PodMonitor);
    #: every pod has its own address, so one fixed port never collides (but on the host
    #: network it does: there 0 = none, no container port at all).
    metrics_port: int = 9100
    #: In the node's network namespace (for nodes without a pod network); the pod still
    #: resolves cluster names first (dnsPolicy ClusterFirstWithHostNet).
    host_network: bool = False
    #: The pod's nodeSelector; empty = any node.
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The pod's tolerations (Kubernetes Toleration objects), e.g. of a dedicated node's taint.
    tolerations: Sequence[Mapping[str, Any]] = ()
    #: The pod's affinity (a Kubernetes Affinity object); empty = none.
    affinity: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Annotations of the pods, beside the aggregation id's (which wins: the operator reads it).
    pod_annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pod_security_context: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: copy.deepcopy(WORKER_POD_SECURITY_CONTEXT)
    )
    container_security_context: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: copy.deepcopy(WORKER_CONTAINER_SECURITY_CONTEXT)
    )
    #: The worker's drain on SIGTERM (DOWNLOADER_SHUTDOWN_GRACE_SECONDS); the pod's
    #: terminationGracePeriodSeconds leaves it 10 s more before the kubelet kills it.
    shutdown_grace_seconds: float = 25.0


def deployment(spec: Spec, namespace: str, replicas: int, pod: WorkerPod) -> dict[str, Any]:
    """The worker Deployment of an aggregation (ownerReferences are added by the caller)."""
    name = resource_name(spec.id)
    labels = {
        "app.kubernetes.io/name": "downloader",
        "app.kubernetes.io/component": "worker",
        AGGREGATION_LABEL: name,
    }
    env_from: list[dict[str, Any]] = []
    if pod.env_configmap:
        env_from.append({"configMapRef": {"name": pod.env_configmap}})
    if pod.env_secret:
        env_from.append({"secretRef": {"name": pod.env_secret}})
    container: dict[str, Any] = {
        "name": "worker",
        "image": pod.image,
        "imagePullPolicy": pod.pull_policy,
        "args": ["worker", "--aggregation", spec.id],
        "env": [
            {"name": "DOWNLOADER_WORKER_CONCURRENCY", "value": str(spec.worker_concurrency)},
            # Its leases are matched to its pod by this name (see `deletion_costs`).
            {"name": "DOWNLOADER_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "envFrom": env_from,
        "resources": dict(pod.resources),
        "securityContext": copy.deepcopy(dict(pod.container_security_context)),
        # The root filesystem is read-only: downloads and files go to these volumes.
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 -- a mount point, not a temp file
            {"name": "downloads", "mountPath": in_image(pod.tmp_dir)},
            {"name": "files", "mountPath": in_image(pod.storage_root)},
        ],
    }
    if pod.metrics_port:
        container["env"].append({"name": "DOWNLOADER_METRICS_PORT", "value": str(pod.metrics_port)})
        container["ports"] = [{"name": "metrics", "containerPort": pod.metrics_port, "protocol": "TCP"}]
    files: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": pod.storage_claim}} if pod.storage_claim else {"emptyDir": {}}
    )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": copy.deepcopy(dict(pod.pod_security_context)),
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "downloads", "emptyDir": {}},
            {"name": "files", **files},
        ],
        "terminationGracePeriodSeconds": math.ceil(pod.shutdown_grace_seconds) + 10,
    }
    if pod.service_account:
        pod_spec["serviceAccountName"] = pod.service_account
        pod_spec["automountServiceAccountToken"] = False  # workers never call the Kubernetes API
    if pod.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pod.tolerations]
    if pod.affinity:
        pod_spec["affinity"] = copy.deepcopy(dict(pod.affinity))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(spec.id),
            "namespace": namespace,
            "labels": labels,
            "annotations": {ID_ANNOTATION: spec.id},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {AGGREGATION_LABEL: name, "app.kubernetes.io/component": "worker"}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**pod.pod_annotations, ID_ANNOTATION: spec.id},
                },
                "spec": pod_spec,
            },
        },
    }


def aggregation_resource(aggr_id: str, limit: int, proxy: str, namespace: str) -> dict[str, Any]:
    """A new Aggregation for an id first seen by the API or found only in Redis."""
    spec: dict[str, Any] = {"id": aggr_id, "limit": max(1, limit)}
    if proxy:
        spec["proxy"] = proxy
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": resource_name(aggr_id),
            "namespace": namespace,
            "annotations": {ID_ANNOTATION: aggr_id},
        },
        "spec": spec,
    }


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _iso(stamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(stamp, tz=datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


#: The ReplicaSet controller removes the pods with the lowest cost first on a scale-down.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def deletion_costs(
    annotations: Mapping[str, Mapping[str, str]], downloads: Mapping[str, int]
) -> dict[str, str]:
    """The pod-deletion-cost each worker pod should carry before its Deployment scales down:
    its downloads in flight, so idle pods go first and the busiest last. Only the pods whose
    annotation differs are returned (each is one API call)."""
    wanted = {pod: str(downloads.get(pod, 0)) for pod in annotations}
    return {pod: cost for pod, cost in wanted.items() if annotations[pod].get(DELETION_COST, "0") != cost}
