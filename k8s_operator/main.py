"""`downloader operator`: kopf with our settings, handlers, adoption loop and liveness endpoint.

One active replica (standalone: the chart runs a single pod with the Recreate strategy);
kopf re-establishes its watches on its own when the API server restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from downloader import cluster, planning
from downloader.operator.handlers import Reconciler, register
from downloader.settings import Settings
from downloader.store import Store

log = logging.getLogger("downloader.operator")


def run(settings: Settings) -> None:
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # for kopf's own login via the client
    reconciler = Reconciler(
        settings, Store.from_url(settings.redis_url), cluster.Cluster.from_settings(settings)
    )
    registry = kopf.OperatorRegistry()
    register(reconciler, registry)
    stopped = asyncio.Event()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = f"{planning.GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=planning.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=planning.GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 60  # re-list regularly: survives quiet API-server restarts
        settings.networking.error_backoffs = [1, 2, 5, 10]
        memo.adoption = asyncio.create_task(reconciler.adopt_forever(stopped, log))

    @kopf.on.cleanup(registry=registry)
    async def stop_adoption(memo: kopf.Memo, **_: Any) -> None:
        stopped.set()
        await memo.adoption

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
