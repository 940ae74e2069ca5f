"""POST /download: validate a job as the original does and queue it (reference 1.1).

The hottest route of the service is answered by `DownloadFastPath`, a bare ASGI layer just
inside the request metrics: it reads the raw body, validates it with `validation` (the
original's exact reason texts and order), queues the job and writes its pre-encoded answer,
without FastAPI's routing, dependency solving or response building (together several times
the cost of the work itself). The APIRoute below is the same endpoint for /openapi.json and
for anything that reaches the router (it shares `queue_job`), so both answer alike.
An `Idempotency-Key` header makes a retry answer the first request's job (`store.idempotency`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from downloader.api import errors
from downloader.api.deps import GrantDep, grant_of, header, require, route_path
from downloader.api.errors import HTTPProblem
from downloader.api.schemas import DOWNLOAD_REQUEST_BODY, Created
from downloader.cluster.kube import Registrar
from downloader.config.apikeys import ALL, Grant, KeyRing
from downloader.config.settings import Settings
from downloader.errors import RequestRejected, StoreError
from downloader.jobs import validation
from downloader.observability import metrics
from downloader.store import (
    ID_ATTEMPTS,
    AsyncStore,
    Enqueued,
    Idempotency,
    IdempotencyConflict,
    NotReplicated,
    idempotency,
)

router = APIRouter(tags=["downloads"])

PATH = "/download"
OTHER_METHODS = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
_JSON = b"application/json"
#: The header a retry's answer carries when an earlier request with its key queued the job.
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
    "description": "Sending the same request again with the same key (within "
    "DOWNLOADER_IDEMPOTENCY_WINDOW_SECONDS) answers the first request's job, with "
    "`Idempotent-Replayed: true`, and queues nothing; another request with the key is a 409. "
    "Visible ASCII characters only.",
}


@router.post(
    PATH,
    status_code=201,
    response_model=Created,
    summary="Queue a download job",
    openapi_extra={"requestBody": DOWNLOAD_REQUEST_BODY, "parameters": [IDEMPOTENCY_KEY_PARAMETER]},
    responses={
        400: {"description": "Invalid job or aggregation (plain text reason)"},
        401: {"description": "API keys are set and the request has no valid one"},
        403: {"description": "The API key does not cover the body's aggr_id"},
        409: {
            "description": "The Idempotency-Key names a job of a different request within "
            "DOWNLOADER_IDEMPOTENCY_WINDOW_SECONDS: nothing was queued"
        },
        413: {"description": "Body larger than DOWNLOADER_MAX_REQUEST_BYTES"},
        500: {"description": "Redis failed"},
        503: {
            "description": "Fewer than DOWNLOADER_REDIS_WAIT_REPLICAS replicas acknowledged the job "
            "in time: nothing was queued; send it again after Retry-After seconds"
        },
    },
)
async def create_download(request: Request, grant: GrantDep) -> Response:
    queued = await queue_job(request.app.state, grant, request.scope, request.receive)
    headers = {REPLAYED_HEADER: "true"} if queued.replayed else None
    return Response(
        content=created_body(queued.id), status_code=201, media_type="application/json", headers=headers
    )


@router.api_route(PATH, methods=OTHER_METHODS, include_in_schema=False)
async def wrong_method() -> Response:
    raise HTTPProblem(405, "Invalid request method")


async def queue_job(state: State, grant: Grant, scope: Scope, receive: Receive) -> Enqueued:
    """Read, validate and queue the job of a POST; its id (`replayed`: an earlier request with
    its Idempotency-Key queued it). The errors are HTTPProblems with the original's texts;
    ClientDisconnect when the client left before sending its body."""
    settings: Settings = state.settings
    key = idempotency_of(scope, grant, settings)
    body = await read_bounded(receive, header(scope, b"content-length"), settings.max_request_bytes)
    try:
        job, aggregation = validation.parse_download_request(body, max_size_cap=settings.max_download_bytes)
    except RequestRejected as exc:
        raw = body.decode("utf-8", errors="replace")
        raise HTTPProblem(400, f"Error unmarshalling body '{raw}' to {exc.target}: {exc.reason}") from exc
    require(grant, job.aggr_id)
    db: AsyncStore = state.store
    try:
        queued = await db.enqueue(job, aggregation, key)
    except IdempotencyConflict as exc:
        metrics.IDEMPOTENCY_CONFLICTS.inc()
        raise HTTPProblem(409, str(exc)) from exc
    except NotReplicated as exc:  # undone: nothing is queued, so sending it again is safe
        raise HTTPProblem(
            503, f"Error queueing {job.job_string()}: {exc}", {"Retry-After": str(exc.retry_after)}
        ) from exc
    except StoreError as exc:
        raise HTTPProblem(500, f"Error queueing {job.job_string()}: {exc}") from exc
    if queued is None:
        raise HTTPProblem(500, f"Could not find unique ID after {ID_ATTEMPTS} tries for {job.job_string()}")
    if queued.replayed:  # queued (and registered) by the first request
        metrics.IDEMPOTENT_REPLAYS.inc()
        return queued
    metrics.JOBS_ENQUEUED.inc()
    registrar: Registrar | None = state.registrar
    if registrar is not None and registrar.wants(aggregation.id):
        # In the background: a slow or absent API server never slows down or fails a POST.
        _background(
            asyncio.to_thread(registrar.register, aggregation.id, aggregation.limit, aggregation.proxy)
        )
    return queued


def idempotency_of(scope: Scope, grant: Grant, settings: Settings) -> Idempotency | None:
    """The request's Idempotency-Key in its caller's scope; None without one, 400 for one that
    cannot be a key (checked before the body is read: nothing is queued)."""
    present = any(name == b"idempotency-key" for name, _ in scope["headers"])
    if not present:
        return None
    key = header(scope, b"idempotency-key").strip()
    problem = idempotency.key_problem(key)
    if problem:
        raise HTTPProblem(400, problem)
    return Idempotency(idempotency.scope_of(grant), key, settings.idempotency_window_seconds)


def created_body(job_id: str) -> bytes:
    # Written by hand: the original's exact bytes, and no serializer on the hottest path.
    return b'{"id":"%s"}' % job_id.encode()


async def read_bounded(receive: Receive, declared: str, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it is known to exceed `limit` bytes
    (`declared`: the Content-Length header, "" without one)."""
    if declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"Request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"Request body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class DownloadFastPath:
    """ASGI middleware answering POST /download itself; everything else goes on to FastAPI.

    Installed inside `RequestMetrics` (which counts it under the route's template, as the
    router would) and outside FastAPI's exception middleware: its own errors are rendered
    here, anything unexpected propagates to the server error middleware (500) as before.
    It checks the API key itself (the path is never public): `deps.Gate`, which checks it
    for everything else, sits inside it, so the hottest route passes one layer fewer.
    """

    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        state: State = scope["app"].state
        try:
            keyring: KeyRing = state.keyring
            grant = grant_of(keyring, header(scope, b"authorization")) if keyring.enabled else ALL
            queued = await queue_job(state, grant, scope, receive)
        except HTTPProblem as exc:
            await errors.plain_error(exc.status, exc.text, exc.headers)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody to answer
        body = created_body(queued.id)
        # The headers `Response(media_type="application/json")` writes, in its order.
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)]
        if queued.replayed:
            headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def install(app: FastAPI) -> None:
    """Serve POST /download through `DownloadFastPath`. Call it before `metrics.install`, so
    the request metrics (added later, so outside it) count these requests too."""
    route = next(r for r in router.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ()))
    app.add_middleware(DownloadFastPath, route=route)


_pending: set[asyncio.Task[Any]] = set()


def _background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(work)
    _pending.add(task)  # a task nobody references may be collected before it finishes
    task.add_done_callback(_pending.discard)
