"""Kubernetes access for the API and the operator: Aggregation resources and worker Deployments.

Wraps the official client (blocking; callers in async code use a thread). Errors leave as
`ClusterError`; a missing object reads as None. `Registrar` is the API's cache that creates
an Aggregation the first time an aggregation id is seen, at most once per id.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml  # type: ignore[import-untyped]  # PyYAML comes with the kubernetes client
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from downloader.cluster import planning
from downloader.config.settings import Settings
from downloader.errors import ClusterError as ClusterError

log = logging.getLogger("downloader.cluster.kube")

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def has_access(settings: Settings) -> bool:
    """A kubeconfig was given, or we run in a pod with a service account."""
    return bool(settings.kubeconfig) or (
        "KUBERNETES_SERVICE_HOST" in os.environ and SERVICE_ACCOUNT_TOKEN.exists()
    )


def client_configuration(settings: Settings) -> client.Configuration:
    """From DOWNLOADER_KUBECONFIG when set, else the pod's service account."""
    configuration = client.Configuration()
    try:
        if settings.kubeconfig:
            config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    # The client reads any YAML as a kubeconfig and fails on the first unexpected shape.
    except (
        config.ConfigException,
        OSError,
        yaml.YAMLError,
        TypeError,
        ValueError,
        AttributeError,
        KeyError,
    ) as exc:
        source = f"DOWNLOADER_KUBECONFIG={settings.kubeconfig}: " if settings.kubeconfig else ""
        why = " ".join(str(exc).split())  # YAML errors span lines
        raise ClusterError(f"no usable Kubernetes configuration: {source}{why}") from exc
    return configuration


def bearer_token(configuration: client.Configuration) -> str:
    """The bare token of a configuration, for clients other than the official one (kopf).
    The key's name varies by client version, and the in-cluster loader writes it as
    `bearer <token>`, lower case: a token sent with that prefix kept is refused (401)."""
    api_key = configuration.api_key or {}
    raw = str(api_key.get("BearerToken") or api_key.get("authorization") or "").strip()
    scheme, _, rest = raw.partition(" ")
    return rest.strip() if rest and scheme.lower() == "bearer" else raw


def api_client(settings: Settings, pool_size: int | None = None) -> client.ApiClient:
    """`pool_size`: connections kept open, for as many calls at once (the client's default
    is 5 per core; a call beyond them opens and drops a connection of its own)."""
    configuration = client_configuration(settings)
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


class Cluster:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    @classmethod
    def from_settings(cls, settings: Settings, pool_size: int | None = None) -> Cluster:
        return cls(api_client(settings, pool_size), settings.kube_namespace)

    # --- Aggregations -------------------------------------------------------------

    def create_aggregation(self, body: dict[str, Any]) -> bool:
        """Create it; False when it exists already."""
        created = _call(
            f"creating Aggregation {body['metadata']['name']}",
            self.custom.create_namespaced_custom_object,
            *(planning.GROUP, planning.VERSION, self.namespace, planning.PLURAL, body),
            tolerate=409,
        )
        return created is not _TOLERATED

    def aggregation_ids(self) -> set[str]:
        listed = _call(
            "listing Aggregations",
            self.custom.list_namespaced_custom_object,
            planning.GROUP,
            planning.VERSION,
            self.namespace,
            planning.PLURAL,
        )
        return {str(item.get("spec", {}).get("id")) for item in cast(dict[str, Any], listed).get("items", [])}

    def patch_aggregation_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge `status` into the Aggregation's status (its subresource: the spec is not touched)."""
        _call(
            f"writing the status of Aggregation {name}",
            self.custom.patch_namespaced_custom_object_status,
            *(planning.GROUP, planning.VERSION, self.namespace, planning.PLURAL, name, {"status": status}),
        )

    # --- worker Deployments -----------------------------------------------------------

    def read_deployment(self, name: str) -> dict[str, Any] | None:
        what = f"reading Deployment {name}"
        found = _call(what, self.apps.read_namespaced_deployment, name, self.namespace, tolerate=404)
        if found is _TOLERATED:
            return None
        return cast(dict[str, Any], self.apps.api_client.sanitize_for_serialization(found))

    def create_deployment(self, body: dict[str, Any]) -> bool:
        """Create it; False when it exists already."""
        created = _call(
            f"creating Deployment {body['metadata']['name']}",
            self.apps.create_namespaced_deployment,
            self.namespace,
            cast(Any, body),
            tolerate=409,
        )
        return created is not _TOLERATED

    def patch_deployment(self, name: str, patch: dict[str, Any]) -> None:
        _call(
            f"patching Deployment {name}", self.apps.patch_namespaced_deployment, name, self.namespace, patch
        )

    # --- worker pods --------------------------------------------------------------------

    def pod_annotations(self, selector: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """The annotations of each pod the label `selector` matches, by pod name."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        listing = functools.partial(self.core.list_namespaced_pod, label_selector=labels)
        listed = _call(f"listing pods {labels}", listing, self.namespace)
        return {pod.metadata.name: dict(pod.metadata.annotations or {}) for pod in listed.items}

    def annotate_pod(self, name: str, annotations: Mapping[str, str]) -> None:
        """Set annotations on a pod; one that is already gone is no error."""
        _call(
            f"annotating pod {name}",
            self.core.patch_namespaced_pod,
            name,
            self.namespace,
            {"metadata": {"annotations": dict(annotations)}},
            tolerate=404,
        )


_TOLERATED = object()


def _call(what: str, method: Callable[..., Any], *args: Any, tolerate: int | None = None) -> Any:
    """One API call; the `tolerate` status (404: absent, 409: exists) returns `_TOLERATED`,
    any other failure becomes a ClusterError naming `what`."""
    try:
        return method(*args)
    except ApiException as exc:
        if tolerate is not None and exc.status == tolerate:
            return _TOLERATED
        raise ClusterError(f"{what}: {exc.status} {exc.reason}") from exc
    except OSError as exc:
        raise ClusterError(f"{what}: {exc}") from exc


class Registrar:
    """Creates the Aggregation of each aggregation id once, as the API first sees it.

    A bounded cache of ids already handled keeps a busy aggregation from costing an API
    call per job; a failed creation is tried again after `retry_after` seconds (the
    operator's adoption covers anything missed meanwhile).
    """

    def __init__(self, cluster: Cluster, *, capacity: int = 100_000, retry_after: float = 30.0) -> None:
        self.cluster = cluster
        self.capacity = capacity
        self.retry_after = retry_after
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def wants(self, aggr_id: str, now: float | None = None) -> bool:
        """True once per id (and again after a failure's cool-down): then call `register`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            retry_at = self._seen.get(aggr_id)
            if retry_at is not None and (retry_at == 0.0 or now < retry_at):
                self._seen.move_to_end(aggr_id)
                return False
            self._seen[aggr_id] = now + self.retry_after  # in progress: others wait
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True

    def register(self, aggr_id: str, limit: int, proxy: str) -> None:
        body = planning.aggregation_resource(aggr_id, limit, proxy, self.cluster.namespace)
        try:
            created = self.cluster.create_aggregation(body)
        except ClusterError as exc:
            log.warning("could not create the Aggregation of %r (retried later): %s", aggr_id, exc)
            return
        with self._lock:
            self._seen[aggr_id] = 0.0
        if created:
            log.info("created Aggregation %s for %r", body["metadata"]["name"], aggr_id)
