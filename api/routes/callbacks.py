"""POST /retry/<id>: put a Failed callback back in the queue (reference 1.4)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from downloader.api import errors
from downloader.api.deps import GrantDep, StoreDep, require
from downloader.api.errors import HTTPProblem
from downloader.config.apikeys import Grant
from downloader.errors import StoreError
from downloader.jobs.models import CorruptJobError, Job

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
        403: {"description": "The API key does not cover the job's aggregation"},
        405: {"description": "Not a POST"},
        409: {"description": "The job's stored data cannot be read (plain text: what is wrong)"},
    },
)
async def retry_callback(path: str, db: StoreDep, grant: GrantDep) -> Response:
    # The original takes the last path segment; `/retry/` names the job "retry".
    job_id = path.rstrip("/").rsplit("/", 1)[-1] if path.strip("/") else "retry"
    if grant.prefixes:
        await _require_job_aggregation(db, grant, job_id)
    try:
        reply = await db.retry_callback(job_id)
    except StoreError as exc:
        if errors.is_unreadable(exc):
            raise  # stored data, not Redis: answered by the error mapping (409)
        raise HTTPProblem(500, f"Error rescheduling callback for job with id '{job_id}': {exc}") from exc
    if reply is None:
        raise HTTPProblem(400, f"Error fetching {job_id} from Redis: Not Found")
    if reply != "OK":
        raise HTTPProblem(
            400, f"Error with callback state of the job {await _job_string(db, job_id)}: {reply}"
        )
    return Response(status_code=204)


async def _require_job_aggregation(db: StoreDep, grant: Grant, job_id: str) -> None:
    """403 for a job outside the key's aggregations; an unknown job is left to the original's 400."""
    try:
        raw = await db.job_hash(job_id)
    except StoreError as exc:
        if errors.is_unreadable(exc):
            raise
        raise HTTPProblem(500, f"Error rescheduling callback for job with id '{job_id}': {exc}") from exc
    if raw.get("ID"):  # without, the job is unknown: the original's 400 follows
        # Read from the hash as it is: one this service cannot decode still names its
        # aggregation, and one that names none belongs to no scoped key.
        require(grant, raw.get("AggrID", ""))


async def _job_string(db: StoreDep, job_id: str) -> str:
    try:
        return Job.from_hash(await db.job_hash(job_id)).job_string()
    except CorruptJobError:
        return job_id
