"""POST /retry/<id>: put a Failed callback back in the queue (reference 1.4)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from downloader.api.deps import StoreDep
from downloader.api.errors import HTTPProblem
from downloader.errors import StoreError
from downloader.models import CorruptJobError, Job

router = APIRouter(tags=["callbacks"])

OTHER_METHODS = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


@router.api_route("/retry/{path:path}", methods=OTHER_METHODS, include_in_schema=False)
async def wrong_method() -> Response:
    raise HTTPProblem(405, "Invalid request method")


@router.post(
    "/retry/{path:path}",
    status_code=204,
    summary="Reschedule a failed callback",
    responses={
        204: {"description": "Rescheduled"},
        400: {"description": "Unknown job, or its callback is not Failed"},
        405: {"description": "Not a POST"},
    },
)
async def retry_callback(path: str, db: StoreDep) -> Response:
    # The original takes the last path segment; `/retry/` names the job "retry".
    job_id = path.rstrip("/").rsplit("/", 1)[-1] if path.strip("/") else "retry"
    try:
        reply = await db.retry_callback(job_id)
    except StoreError as exc:
        raise HTTPProblem(500, f"Error rescheduling callback for job with id '{job_id}': {exc}") from exc
    if reply is None:
        raise HTTPProblem(400, f"Error fetching {job_id} from Redis: Not Found")
    if reply != "OK":
        raise HTTPProblem(
            400, f"Error with callback state of the job {await _job_string(db, job_id)}: {reply}"
        )
    return Response(status_code=204)


async def _job_string(db: StoreDep, job_id: str) -> str:
    try:
        return Job.from_hash(await db.job_hash(job_id)).job_string()
    except CorruptJobError:
        return job_id
