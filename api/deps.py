"""Dependencies of the routes: the settings and the Redis store built by the lifespan, and the
caller's API-key grant (`authenticate`, which the app runs before every route).

All of them are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a
thread hand-off per dependency and request that cost more than the rest of a POST.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from downloader.api import errors
from downloader.apikeys import ALL, Grant, KeyRing
from downloader.cluster import Registrar
from downloader.settings import Settings
from downloader.store import AsyncStore

#: Routes that answer without an API key: probes, metrics and the web page with its assets
#: (the page asks its user for a key and sends it with its data requests).
PUBLIC_PATHS = frozenset({"/hb", "/healthz", "/readyz", "/metrics", "/"})
PUBLIC_PREFIXES = ("/static/",)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> AsyncStore:
    db: AsyncStore = request.app.state.store
    return db


async def get_registrar(request: Request) -> Registrar | None:
    registrar: Registrar | None = request.app.state.registrar
    return registrar


async def authenticate(request: Request) -> Grant:
    """The grant of the request's bearer token; 401 without a valid one while keys are set."""
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled or _is_public(request.scope):
        return ALL
    return grant_of(keyring, request.headers.get("authorization", ""))


def grant_of(keyring: KeyRing, authorization: str) -> Grant:
    """The grant of an `Authorization` header's bearer token (keys are set); 401 without one."""
    scheme, _, token = authorization.strip().partition(" ")
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


def route_path(scope: Scope) -> str:
    """The path routes are matched against: without the proxy's root_path (Starlette's rule)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def _is_public(scope: Scope) -> bool:
    # The path the router matched (without a proxy's root_path): it equals "/hb" only when the
    # /hb route answers. No normalisation: `/hb/../jobs/x` is matched, and checked, as is.
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistrarDep = Annotated[Registrar | None, Depends(get_registrar)]
StoreDep = Annotated[AsyncStore, Depends(get_store)]
GrantDep = Annotated[Grant, Depends(authenticate)]
