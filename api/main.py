"""The API's composition root: settings, the Redis store in the lifespan, routers, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import fastapi_offline
from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

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
#: Swagger UI's and ReDoc's scripts and styles, from the fastapi-offline wheel, served under
#: DOCS_ASSETS_URL: /docs and /redoc need no CDN (offline, or behind a strict egress).
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/static/docs"


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
        docs_url=None,  # FastAPI's pages load their assets from a CDN: ours are below
        redoc_url=None,
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
    _documentation_pages(app)
    # Before /static, which would otherwise take its paths.
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/static", StaticFiles(directory=ui.STATIC_DIR), name="static")  # the page's assets
    if serve_files:
        root = Path(settings.storage_root)
        root.mkdir(parents=True, exist_ok=True)
        app.mount("/files", files.StoredFiles(directory=root), name="files")
    return app


def _documentation_pages(app: FastAPI) -> None:
    """/docs (Swagger UI, with its OAuth2 redirect page) and /redoc, as FastAPI makes them but
    with the assets of DOCS_ASSETS_URL. Plain routes, as FastAPI's are: the key check of the
    Gate covers them, no route dependency."""

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg",
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/docs/oauth2-redirect", oauth2_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
