"""`downloader operator`: kopf with our settings, handlers, sweep, adoption loop and liveness endpoint.

One active replica (standalone: the chart runs a single pod with the Recreate strategy);
kopf re-establishes its watches on its own when the API server restarts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from downloader.cluster import kube, planning
from downloader.config.settings import Settings
from downloader.observability.heartbeat import Heartbeat
from downloader.operator.handlers import KUBE_CALLS_AT_ONCE, Index, Reconciler, register
from downloader.store import Instance, Store

log = logging.getLogger("downloader.operator")


def run(settings: Settings) -> None:
    cluster = kube.Cluster.from_settings(settings, pool_size=KUBE_CALLS_AT_ONCE)
    reconciler = Reconciler(settings, Store.from_settings(settings), cluster)
    registry = kopf.OperatorRegistry()
    register(reconciler, registry)
    stopped = asyncio.Event()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # A registry of our own has none of kopf's default login handlers; and ours reads
        # DOWNLOADER_KUBECONFIG, which the client library's defaults would not.
        c = kube.client_configuration(settings)
        token = kube.bearer_token(c)
        return kopf.ConnectionInfo(
            server=c.host,
            ca_path=c.ssl_ca_cert,
            insecure=not c.verify_ssl,
            scheme="Bearer" if token else None,
            token=token or None,
            certificate_path=c.cert_file,
            private_key_path=c.key_file,
            default_namespace=settings.kube_namespace,
        )

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **indexes: Any) -> None:
        settings.persistence.finalizer = f"{planning.GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=planning.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=planning.GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 60  # re-list regularly: survives quiet API-server restarts
        settings.networking.error_backoffs = [1, 2, 5, 10]
        # No kopf timer or daemon per Aggregation (issue 17: a delete waited for its timer to
        # exit): one sweep refreshes them all, and `retire` waits only for a refresh in progress.
        # The indexes are filled by kopf's watches once it runs: the sweep reads them live.
        aggregations: Index = indexes["aggregations"]  # kopf's, by their ids in `register`
        sweep = reconciler.sweep_forever(stopped, aggregations, indexes["worker_deployments"])
        memo.sweep = asyncio.create_task(sweep)
        memo.adoption = asyncio.create_task(reconciler.adopt_forever(stopped, log))
        # listed on the dashboard (`instances:operator`) until it stops
        memo.heartbeat = asyncio.create_task(
            Heartbeat(reconciler.db, Instance.here("operator")).forever(stopped)
        )

    @kopf.on.cleanup(registry=registry)
    async def stop_adoption(memo: kopf.Memo, **_: Any) -> None:
        stopped.set()
        await memo.sweep
        await memo.adoption
        await memo.heartbeat

    liveness = (
        f"http://0.0.0.0:{settings.operator_liveness_port}/healthz"
        if settings.operator_liveness_port
        else None
    )
    kopf.run(
        registry=registry,
        standalone=True,
        namespaces=[settings.kube_namespace],
        liveness_endpoint=liveness,
    )
