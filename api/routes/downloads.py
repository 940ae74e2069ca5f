"""POST /download: validate a job as the original does and queue it (reference 1.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response

from downloader import metrics, validation
from downloader.api.deps import GrantDep, RegistrarDep, SettingsDep, StoreDep, require
from downloader.api.errors import HTTPProblem
from downloader.api.schemas import DOWNLOAD_REQUEST_BODY, Created
from downloader.errors import RequestRejected, StoreError
from downloader.store import ID_ATTEMPTS

router = APIRouter(tags=["downloads"])

OTHER_METHODS = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


@router.post(
    "/download",
    status_code=201,
    response_model=Created,
    summary="Queue a download job",
    openapi_extra={"requestBody": DOWNLOAD_REQUEST_BODY},
    responses={
        400: {"description": "Invalid job or aggregation (plain text reason)"},
        401: {"description": "API keys are set and the request has no valid one"},
        403: {"description": "The API key does not cover the body's aggr_id"},
        413: {"description": "Body larger than DOWNLOADER_MAX_REQUEST_BYTES"},
        500: {"description": "Redis failed"},
    },
)
async def create_download(
    request: Request, db: StoreDep, settings: SettingsDep, registrar: RegistrarDep, grant: GrantDep
) -> Response:
    body = await read_bounded(request, settings.max_request_bytes)
    try:
        job, aggregation = validation.parse_download_request(body, max_size_cap=settings.max_download_bytes)
    except RequestRejected as exc:
        raw = body.decode("utf-8", errors="replace")
        raise HTTPProblem(400, f"Error unmarshalling body '{raw}' to {exc.target}: {exc.reason}") from exc
    require(grant, job.aggr_id)
    try:
        job_id = await db.enqueue(job, aggregation)
    except StoreError as exc:
        raise HTTPProblem(500, f"Error queueing {job.job_string()}: {exc}") from exc
    if job_id is None:
        raise HTTPProblem(500, f"Could not find unique ID after {ID_ATTEMPTS} tries for {job.job_string()}")
    metrics.JOBS_ENQUEUED.inc()
    if registrar is not None and registrar.wants(aggregation.id):
        # In the background: a slow or absent API server never slows down or fails a POST.
        _background(
            asyncio.to_thread(registrar.register, aggregation.id, aggregation.limit, aggregation.proxy)
        )
    # Written by hand: the original's exact bytes, and no serializer on the hottest path.
    return Response(content=f'{{"id":"{job_id}"}}', status_code=201, media_type="application/json")


@router.api_route("/download", methods=OTHER_METHODS, include_in_schema=False)
async def wrong_method() -> Response:
    raise HTTPProblem(405, "Invalid request method")


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"Request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"Request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_pending: set[asyncio.Task[Any]] = set()


def _background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(work)
    _pending.add(task)  # a task nobody references may be collected before it finishes
    task.add_done_callback(_pending.discard)
