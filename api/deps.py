"""Dependencies of the routes: the settings and the Redis store built by the lifespan, and the
caller's API-key grant (`authenticate`, which the app runs before every route).

The key itself is checked by `Gate`, an ASGI layer in front of everything the app serves:
its routes, but also FastAPI's documentation pages and the mounted file trees (/files/),
which run no route dependency. Whatever is not listed public needs a key, including paths
that match nothing (no probing of what exists). `authenticate` hands the Gate's grant on.

All of them are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a
thread hand-off per dependency and request that cost more than the rest of a POST.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from downloader.api import errors
from downloader.cluster.kube import Registrar
from downloader.config.apikeys import ALL, Grant, KeyRing
from downloader.config.settings import Settings
from downloader.store import AsyncStore

#: Routes that answer without an API key: probes, metrics and the web page with its assets
#: (the page asks its user for a key and sends it with its data requests). Everything else,
#: /openapi.json, /docs, /redoc and /files/ included, needs one (README, "API keys").
PUBLIC_PATHS = frozenset({"/hb", "/healthz", "/readyz", "/metrics", "/"})
PUBLIC_PREFIXES = ("/static/",)
#: Where `Gate` leaves the caller's grant in the ASGI scope.
GRANT_SCOPE_KEY = "downloader.grant"


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
    """The grant of the request's bearer token; 401 without a valid one while keys are set.

    The Gate in front has checked the token already and left its grant in the scope; it is
    looked up again only for a request that did not pass the Gate (an app assembled without it).
    """
    grant: Grant | None = request.scope.get(GRANT_SCOPE_KEY)
    if grant is not None:
        return grant
    return grant_for(request.app.state.keyring, request.scope)


def grant_for(keyring: KeyRing, scope: Scope) -> Grant:
    """The grant of a request (HTTP or websocket scope); raises the 401 HTTPProblem."""
    if not keyring.enabled or _is_public(scope):
        return ALL
    return grant_of(keyring, header(scope, b"authorization"))


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


class Gate:
    """ASGI layer: while API keys are set, every request but the public ones needs a valid
    key, whatever answers it (route, mount, FastAPI's own pages, or nothing at all).

    Refusals are the 401 answers of `errors.unauthorized`; a websocket is closed with 1008
    (policy violation) before it is accepted. The grant is left in the scope for the routes.
    """

    def __init__(self, app: ASGIApp, keyring: KeyRing) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                scope[GRANT_SCOPE_KEY] = grant_for(self.keyring, scope)
            except errors.HTTPProblem as exc:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": exc.text})
                    return
                await errors.plain_error(exc.status, exc.text, exc.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


def header(scope: Scope, name: bytes) -> str:
    """The first value of a header (`name` in lower case, as ASGI servers give them), "" if
    absent; decoded as Starlette's `Headers` does."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


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
