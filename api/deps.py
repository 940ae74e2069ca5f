"""Dependencies of the routes: the settings and the Redis store built by the lifespan, and the
caller's API-key grant (`authenticate`, which the app runs before every route)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from downloader.api import errors
from downloader.apikeys import ALL, Grant, KeyRing
from downloader.cluster import Registrar
from downloader.settings import Settings
from downloader.store import AsyncStore

#: Routes that answer without an API key: probes, metrics and the web page with its assets
#: (the page asks its user for a key and sends it with its data requests).
PUBLIC_PATHS = frozenset({"/hb", "/healthz", "/readyz", "/metrics", "/"})
PUBLIC_PREFIXES = ("/static/",)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> AsyncStore:
    db: AsyncStore = request.app.state.store
    return db


def get_registrar(request: Request) -> Registrar | None:
    registrar: Registrar | None = request.app.state.registrar
    return registrar


def authenticate(request: Request) -> Grant:
    """The grant of the request's bearer token; 401 without a valid one while keys are set."""
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled or _is_public(request):
        return ALL
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.unauthorized(presented=False)
    grant = keyring.find(token)
    if grant is None:
        raise errors.unauthorized(presented=True)
    return grant


def require(grant: Grant, aggr_id: str) -> None:
    """403 unless the caller's key covers the aggregation."""
    if not grant.covers(aggr_id):
        raise errors.forbidden(aggr_id)


def _is_public(request: Request) -> bool:
    # The path the router matched (without a proxy's root_path): it equals "/hb" only when the
    # /hb route answers. No normalisation: `/hb/../jobs/x` is matched, and checked, as is.
    path: str = request.scope["path"]
    root = request.scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistrarDep = Annotated[Registrar | None, Depends(get_registrar)]
StoreDep = Annotated[AsyncStore, Depends(get_store)]
GrantDep = Annotated[Grant, Depends(authenticate)]
