"""The API's composition root: settings, the Redis store in the lifespan, routers, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from downloader import __version__
from downloader.api import deps, errors, files
from downloader.api.routes import callbacks, downloads, health, jobs, prometheus, stats, ui
from downloader.cluster import kube
from downloader.config import apikeys
from downloader.config.settings import Settings
from downloader.observability.heartbeat import Heartbeat
from downloader.store import AsyncStore, Instance

#: Longest a shutdown waits for a heartbeat in progress (one on a dead Redis waits for its
#: socket timeout) before cancelling it.
HEARTBEAT_STOP_SECONDS = 5.0


def create_app(settings: Settings, *, serve_files: bool = False) -> FastAPI:
    """The ASGI app. `serve_files` exposes the storage root at /files/ (used by `downloader up`).

    Raises `apikeys.InvalidApiKeys` for an unreadable DOWNLOADER_API_KEYS: better no API than
    an open one.
    """
    keyring = apikeys.parse_api_keys(settings.api_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.store = AsyncStore.from_settings(settings)
        app.state.registrar = None
        if settings.kube_create_aggregations and kube.has_access(settings):
            app.state.registrar = kube.Registrar(kube.Cluster.from_settings(settings))
        stopping = asyncio.Event()  # the dashboard's list of API processes, kept until shutdown
        heartbeat = asyncio.create_task(Heartbeat(app.state.store, Instance.here("api")).forever(stopping))
        try:
            yield
        finally:
            stopping.set()  # lets a beat in progress finish (see Heartbeat.forever)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(heartbeat, HEARTBEAT_STOP_SECONDS)
            await app.state.store.close()

    app = FastAPI(
        title="Downloader",
        version=__version__,
        summary="Asynchronous, rate-limited downloads with callbacks",
        lifespan=lifespan,
        redirect_slashes=False,
        # The grant the Gate found, on every route; the public ones are listed in deps.
        dependencies=[Depends(deps.authenticate)],
    )
    app.state.keyring = keyring
    errors.install(app)
    for module in (downloads, jobs, callbacks, stats, health, ui):
        app.include_router(module.router)
    if keyring.enabled:
        # The key check in front of everything but POST /download, which checks it itself:
        # added first, so it sits inside the fast path (and inside the metrics, which count its
        # 401s). Without keys everything is open: no layer to pass.
        app.add_middleware(deps.Gate, keyring=keyring)
    downloads.install(app)  # POST /download ahead of the router (before the metrics: inside them)
    prometheus.install(app, settings)  # GET /metrics and the request counts
    app.mount("/static", StaticFiles(directory=ui.STATIC_DIR), name="static")  # the page's assets
    if serve_files:
        root = Path(settings.storage_root)
        root.mkdir(parents=True, exist_ok=True)
        app.mount("/files", files.StoredFiles(directory=root), name="files")
    return app
