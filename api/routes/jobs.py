"""GET /jobs/{id}: where a job is, what happened to it, and when."""

from __future__ import annotations

import datetime
import time

from fastapi import APIRouter

from downloader.api.deps import GrantDep, StoreDep, require
from downloader.api.errors import HTTPProblem
from downloader.api.schemas import CallbackState, DownloadState, JobView
from downloader.jobs.models import DownloadResult, Job, State
from downloader.store import JobStatus

router = APIRouter(tags=["jobs"])

#: The callback state a delivered job shows (the original stores none: it deletes the job).
DELIVERED = "Delivered"


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="A job's state, attempts, errors and times",
    responses={
        403: {"description": "The API key does not cover the job's aggregation"},
        404: {"description": "No such job (unknown, or delivered and its file deleted)"},
        409: {"description": "The job's stored data cannot be read (plain text: what is wrong)"},
    },
)
async def get_job(job_id: str, db: StoreDep, grant: GrantDep) -> JobView:
    status = await db.job_status(job_id)
    if status is None:
        raise HTTPProblem(404, f"Job {job_id} not found")
    require(grant, status.job.aggr_id)
    return view(status, now=time.time())


def view(status: JobStatus, now: float) -> JobView:
    job, meta = status.job, status.meta
    if not meta and status.queued_at is not None:  # never claimed: its queue entry's score
        meta = {"CreatedAt": repr(status.queued_at), "UpdatedAt": repr(status.queued_at)}
    # Where this job's callback goes, or went: a failed download may have its own destination.
    backend, destination = job.callback_destination(succeeded=job.download_state != State.FAILED) or ("", "")
    measured = DownloadResult.decode(meta.get("Result"))
    return JobView(
        id=job.id,
        aggr_id=job.aggr_id,
        url=job.url,
        state=summary_state(status, now),
        download=DownloadState(
            state=str(job.download_state),
            attempts=job.download_count,
            max_retries=job.max_retries,
            response_code=job.response_code,
            error=job.download_meta,
            image_size=job.image_size,
            download_url=_download_url(job),
            sha256=measured.sha256,
            size=measured.size,
        ),
        callback=CallbackState(
            state=DELIVERED if status.delivered_at is not None else str(job.callback_state),
            attempts=job.callback_count,
            error=job.callback_meta,
            backend=backend,
            destination=destination,
            delivered_at=_iso(status.delivered_at),
        ),
        errors=status.errors,
        crashes=_count(meta.get("Crashes")),
        created_at=_iso(meta.get("CreatedAt")),
        updated_at=_iso(meta.get("UpdatedAt")),
        started_at=_iso(meta.get("StartedAt")),
        finished_at=_iso(meta.get("FinishedAt")),
        # The download's next attempt, or else the callback's (waiting out its backoff).
        next_attempt_at=_iso(status.queued_at if status.queued_at is not None else status.callback_due_at),
        lease_expires_at=_iso(status.lease_expires_at),
        dead_letter=None if status.dead_letter is None else status.dead_letter.reason,
    )


def summary_state(status: JobStatus, now: float) -> str:
    job = status.job
    if status.dead_letter is not None:
        return "dead_lettered"
    if status.delivered_at is not None:
        return "delivered"
    if job.callback_state == State.FAILED:
        return "callback_failed"
    if job.callback_state in (State.PENDING, State.IN_PROGRESS):
        return "callback_pending"
    if job.download_state == State.SUCCESS:
        return "succeeded"
    if job.download_state == State.FAILED:
        return "failed"
    if job.download_state == State.IN_PROGRESS or status.lease_expires_at is not None:
        return "in_progress"
    if status.queued_at is not None and status.queued_at > now:
        return "waiting_retry"
    return "queued"


def _iso(value: str | float | None) -> str | None:
    """A stored time, None when there is none or it is not a time (`inf`, year 10^10)."""
    if value in (None, ""):
        return None
    try:
        stamp = float(value)
        return datetime.datetime.fromtimestamp(stamp, tz=datetime.UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return None


def _download_url(job: Job) -> str:
    """The callback's download_url; "" when the stored base URL is not one (`http://[`)."""
    try:
        return job.public_download_url()
    except ValueError:
        return ""


def _count(value: str | None) -> int:
    """A stored counter; 0 when missing or unreadable (a view is no place to fail over it)."""
    return int(value) if value and value.isascii() and value.isdigit() else 0
