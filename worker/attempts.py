"""One attempt at one job, and the outcome it leaves in Redis (reference 3.3-3.5).

`decide` is the pure part (error -> retry, fail, or give back without counting) and is
unit-tested on its own; `run_attempt` wires fetching, checks and storage around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from downloader.delivery import storage
from downloader.errors import (
    AttemptPhase,
    DownloaderError,
    DownloadError,
    FailureReason,
    ImageSizeError,
    Interrupted,
    InvalidPattern,
    StorageError,
)
from downloader.fetching import imaging, mime, resume
from downloader.fetching.download import Fetched, Fetcher
from downloader.jobs.models import Aggregation, DownloadResult, Job, State
from downloader.observability import metrics
from downloader.observability.stats import Stats
from downloader.store import NextStep, Outcome, Store, keys

log = logging.getLogger("downloader.worker")


@dataclasses.dataclass(frozen=True)
class AttemptContext:
    """What an attempt needs of the worker that runs it, built once by the worker: an attempt
    sees neither the scheduling loop nor its state, and this module does not import it."""

    db: Store
    token: str
    """The worker's lease token: every outcome is written fenced by it."""
    fetcher: Fetcher
    storage: storage.Storages
    stats: Stats
    tmp_dir: Path
    download_url: str
    retry_backoff_seconds: float
    max_retries: int
    job_retention_seconds: float
    retry_after_max_seconds: float = 0.0
    """A 429/503's Retry-After pauses the job's host fleet-wide, capped at this; 0: ignored."""
    sync_files: bool = True
    """fsync a download bound for the filesystem before it is stored (`sync_files` setting)."""
    clock: Callable[[], float] = time.time
    """Wall-clock time, which queue scores are in."""


@dataclasses.dataclass(eq=False)
class Download:
    """A running download as the lease keeper and the watchdog see it."""

    cancelled: threading.Event
    confirmed: float
    """time.monotonic() when our lease was last known good: when the claim or the last
    successful renewal was sent (the lease in Redis runs from no earlier than that)."""
    ending: bool = False
    """The attempt is writing its outcome, which gives the lease up."""


def run_attempt(ctx: AttemptContext, aggregation: Aggregation, job: Job, download: Download) -> None:
    cancelled = download.cancelled
    started = time.monotonic()
    metrics.JOBS_STARTED.inc()
    error: DownloadError | None = None
    try:
        image_size, code, measured = _download_and_store(ctx, aggregation, job, cancelled)
    except DownloadError as err:
        error = err
        _count_response(ctx, err)
        outcome = decide(
            job,
            err,
            now=ctx.clock(),
            backoff=ctx.retry_backoff_seconds,
            default_max_retries=ctx.max_retries,
            retention=ctx.job_retention_seconds,
        )
        outcome = honour_retry_after(outcome, err, now=ctx.clock(), cap=ctx.retry_after_max_seconds)
        if outcome.pause_host:
            metrics.HOST_PAUSES.labels(str(err.response_code)).inc()
    else:
        ctx.stats.incr(f"download.response.{code}")
        outcome = success(
            job,
            code,
            image_size,
            ctx.download_url,
            now=ctx.clock(),
            retention=ctx.job_retention_seconds,
            measured=measured,
        )
    download.ending = True  # from here a lease found gone is this write's doing, not a loss
    result = ctx.db.finish(job, ctx.token, _counted(job, outcome, error))
    if result > 0 and error is not None and outcome.next_step is not NextStep.RETRY:
        # The job is over: what a cut attempt kept goes too. A download that succeeded has
        # left nothing behind (its bytes were stored, its resume record dropped).
        resume.forget(ctx.tmp_dir, job.id)
    metrics.attempt_done(
        error,
        terminal=outcome.fields.get("DownloadState") == State.FAILED.value,
        written=result > 0,
        size=0 if error is not None else measured.size,
        seconds=time.monotonic() - started,
    )
    if result > 0:
        _log_attempt(job, outcome, time.monotonic() - started)
    if result == 0:
        log.warning(
            "job %s: lease lost before the outcome was written; another worker owns it",
            job.id,
            extra={"event": "lease_lost", "job_id": job.id, "aggr_id": job.aggr_id},
        )
    elif result < 0:
        log.warning("job %s: its hash vanished while it was downloading", job.id)


#: What an attempt came to ("ok", "failed", "retried"), by the download state it left; the
#: dashboard counts these, and the attempt's log line names its event after them.
_KINDS = {State.SUCCESS.value: "ok", State.FAILED.value: "failed"}
_EVENTS = {"ok": "download_succeeded", "failed": "download_failed", "retried": "download_retried"}


def _kind(outcome: Outcome) -> str:
    return _KINDS.get(outcome.fields.get("DownloadState", ""), "retried")


def _log_attempt(job: Job, outcome: Outcome, duration: float) -> None:
    """One INFO line per finished attempt, with the structured fields of logs.FIELDS."""
    event = _EVENTS[_kind(outcome)]
    code = outcome.fields.get("ResponseCode", "")
    response = int(code) if code.isdigit() and int(code) else None  # 0: no answer at all
    log.info(
        "job %s of %s: %s in %.3fs (response %s)%s",
        job.id,
        job.aggr_id,
        event.removeprefix("download_"),
        duration,
        response or "none",
        f": {outcome.error}" if outcome.error else "",
        extra={
            "event": event,
            "job_id": job.id,
            "aggr_id": job.aggr_id,
            "duration": duration,
            "response_code": response,
        },
    )


def _download_and_store(
    ctx: AttemptContext, aggregation: Aggregation, job: Job, cancelled: threading.Event
) -> tuple[str, int, DownloadResult]:
    pattern = _pattern(job)
    local = ctx.storage.local(job)  # a filesystem takes the file by a move; S3 by a copy
    fetched = ctx.fetcher.fetch(
        job_id=job.id,
        url=job.url,
        proxy=aggregation.proxy,
        job_headers=job.request_headers,
        # A job may shorten the service's total timeout and size cap, not raise them (the
        # original let a stalled server hold a slot of the aggregation for as long as the job
        # asked); the fetcher takes the lower of the job's and its own.
        timeout=float(job.download_timeout),
        max_bytes=job.options.max_size,
        tmp_dir=ctx.tmp_dir,
        sniff=True,  # the type is stored with the file (S3 Content-Type); libmagic costs ~25 us
        mime_pattern=pattern,
        cancelled=cancelled,
        # bytes bound for S3 are read back for the upload: a crash before the outcome is
        # written runs the job again, so syncing them would buy nothing
        sync=ctx.sync_files and local,
    )
    _count_resume(fetched)
    stored = False
    try:
        image_size = ""
        if job.extract_image_size:
            try:
                image_size = imaging.image_size(fetched.path, fetched.mime_type)
            except ImageSizeError as exc:
                raise _image_failure(exc, fetched.response_code) from exc
        if cancelled.is_set():
            raise Interrupted("download cancelled (shutting down, disk full or lease not renewed)")
        try:
            ctx.storage.store(job, fetched.path, fetched.mime_type)
            stored = True
        except StorageError as exc:
            raise _storage_failure(job, exc, fetched.response_code) from exc
    finally:
        if not (stored and local):  # moved into storage: nothing is left to remove
            with contextlib.suppress(OSError):
                fetched.path.unlink(missing_ok=True)
    measured = DownloadResult(
        sha256=fetched.sha256, size=fetched.size, content_type=fetched.mime_type, final_url=fetched.final_url
    )
    return image_size, fetched.response_code, measured


def _count_resume(fetched: Fetched) -> None:
    if fetched.resumed_from:
        metrics.DOWNLOADS_RESUMED.inc()
        metrics.RESUMED_BYTES.inc(fetched.resumed_from)
    if fetched.discarded:
        metrics.RESUME_RESTARTS.inc()


def _image_failure(exc: ImageSizeError, response_code: int) -> DownloadError:
    return DownloadError(
        AttemptPhase.EXTRACTING_IMAGE_SIZE,
        str(exc),
        reason=FailureReason.IMAGE,
        retriable=False,
        response_code=response_code,
    )


def _storage_failure(job: Job, exc: StorageError, response_code: int) -> DownloadError:
    if job.s3_bucket:
        # The job's own bucket (missing, or not writable for us) is the client's to fix; botocore
        # has already retried transient errors. Failed at once, as the original (which lost
        # this error when `extra` was set, and reported success: bug 10.1.3).
        return DownloadError(
            AttemptPhase.STORING_FILE_S3,
            str(exc),
            reason=FailureReason.STORAGE,
            retriable=False,
            response_code=response_code,
        )
    # Our storage failing is not the job's fault: retried without using an attempt.
    return DownloadError(
        AttemptPhase.STORING_FILE_DEFAULT,
        str(exc),
        reason=FailureReason.STORAGE,
        retriable=True,
        internal=True,
        response_code=response_code,
    )


def _pattern(job: Job) -> mime.MimePattern | None:
    if not job.mime_type:
        return None
    try:
        return mime.parse_pattern(job.mime_type)
    except InvalidPattern as exc:
        raise DownloadError(
            AttemptPhase.VALIDATING_MIME_TYPE, str(exc), reason=FailureReason.MIME, retriable=False
        ) from exc


#: The stats counter of a failure reason that has one of its own.
_REASON_STATS = {
    FailureReason.DESTINATION_NOT_ALLOWED: "destinationNotAllowed",
    FailureReason.MIME: "download.response.mime",
    FailureReason.IMAGE: "download.response.image-size",
    FailureReason.TLS: "download.response.tls",
}


def _count_response(ctx: AttemptContext, err: DownloadError) -> None:
    """The original's stats counters of a failed attempt, from its reason and phase."""
    counter = _REASON_STATS.get(err.reason)
    if counter is not None:
        ctx.stats.incr(counter)
    elif err.phase == AttemptPhase.DOWNLOADING_FILE and not err.internal:
        ctx.stats.incr("download.response.body")
    if err.response_code:
        ctx.stats.incr(f"download.response.{err.response_code}")
    if err.internal:
        ctx.stats.incr("failures")


def success(
    job: Job,
    code: int,
    image_size: str,
    download_url: str,
    *,
    now: float,
    retention: float,
    measured: DownloadResult | None = None,
) -> Outcome:
    fields = {
        "DownloadState": State.SUCCESS.value,
        "DownloadCount": str(job.download_count + 1),
        "DownloadMeta": "",
        "DownloadURL": download_url,
        "ResponseCode": str(code),
        "ImageSize": image_size,
    }
    outcome = _finished(job, fields, now=now, error="", retention=retention)
    return dataclasses.replace(outcome, result=measured.encode()) if measured is not None else outcome


def decide(
    job: Job, err: DownloadError, *, now: float, backoff: float, default_max_retries: int, retention: float
) -> Outcome:
    """What a failed attempt leads to.

    * interrupted by us (shutdown, sick disk): back to the queue at once, attempt not counted;
    * internal (our disk, our storage): retried after one backoff unit, not counted (the
      original retried these with no delay, forever: bug 10.1.12);
    * retriable with attempts left: back to the queue after `attempt x backoff`;
    * otherwise Failed, and the callback is queued.
    """
    text = str(err)
    code = str(err.response_code)
    if isinstance(err, Interrupted):
        return Outcome(fields={"DownloadState": State.PENDING.value}, next_step=NextStep.RETRY, due=now)
    if err.internal:
        return Outcome(
            fields={"DownloadState": State.PENDING.value, "ResponseCode": code},
            next_step=NextStep.RETRY,
            due=now + backoff,
            error=text,
        )
    count = job.download_count + 1
    if err.retriable and count <= job.retry_limit(default_max_retries):
        fields = {
            "DownloadState": State.PENDING.value,
            "DownloadCount": str(count),
            "DownloadMeta": "",
            "ResponseCode": code,
        }
        return Outcome(fields=fields, next_step=NextStep.RETRY, due=now + count * backoff, error=text)
    fields = {
        "DownloadState": State.FAILED.value,
        "DownloadCount": str(count),
        "DownloadMeta": text,
        "ResponseCode": code,
        "ImageSize": "",
    }
    return _finished(job, fields, now=now, error=text, retention=retention)


def honour_retry_after(outcome: Outcome, err: DownloadError, *, now: float, cap: float) -> Outcome:
    """A 429/503 with Retry-After: its host waits that long (at most `cap`; 0 = ignored) across
    the fleet, and a retry is due no sooner than the pause's end. The attempt counts as any
    other answer of that status: the pause uses no attempt of its own."""
    if not cap or not err.retry_after:
        return outcome
    pause = min(err.retry_after, cap)
    due = max(outcome.due, now + pause) if outcome.next_step is NextStep.RETRY else outcome.due
    return dataclasses.replace(outcome, due=due, pause_host=pause)


def _finished(job: Job, fields: dict[str, str], *, now: float, error: str, retention: float) -> Outcome:
    """To the callback queue; or, with no callback for this outcome, to the deletion queue
    after `retention` (the original kept such jobs forever). A file in the job's own bucket
    is the client's and stays; one in our storage goes with the job."""
    succeeded = fields["DownloadState"] == State.SUCCESS.value
    if job.callback_destination(succeeded=succeeded) is None:
        location = storage.location_of(job)
        target = storage.Location(key="") if location.bucket else location
        return Outcome(
            fields=fields,
            next_step=NextStep.DELETE,
            due=now + retention,
            error=error,
            finished=True,
            deletion_target=target.encode(),
        )
    fields = {**fields, "CallbackState": State.PENDING.value}
    return Outcome(fields=fields, next_step=NextStep.CALLBACK, due=now, error=error, finished=True)


def release(ctx: AttemptContext, aggr_id: str, job_id: str) -> None:
    """Give a job back to its queue at shutdown without counting the attempt."""
    job = Job(id=job_id, url="", aggr_id=aggr_id)
    outcome = Outcome(
        fields={"DownloadState": State.PENDING.value}, next_step=NextStep.RETRY, due=ctx.clock()
    )
    try:
        if ctx.db.finish(job, ctx.token, outcome) == 1:
            log.info("job %s released back to %s", job_id, keys.queue(aggr_id))
    except DownloaderError as exc:  # the lease expiry recovers it anyway
        log.warning("could not release job %s (its lease will expire): %s", job_id, exc)


def _counted(job: Job, outcome: Outcome, error: DownloadError | None = None) -> Outcome:
    """The outcome with what the dashboard counts: the attempt in its minute, and a failed
    job's error among the recent failures (written by the same script, so only when the
    outcome itself is), with the error's phase and reason as fields of their own."""
    kind = _kind(outcome)
    if kind == "retried" and not outcome.error:
        return outcome  # interrupted by us (shutdown, full disk): not the job's doing
    failure = ""
    if kind == "failed":
        # Capped texts: fifty records must stay small whatever the URLs and errors are.
        failure = json.dumps(
            {
                "id": job.id,
                "aggr_id": job.aggr_id,
                "url": job.url[:2048],
                "error": outcome.error[:2048],
                "code": outcome.fields.get("ResponseCode", ""),
                "phase": error.phase.value if error is not None else "",
                "reason": error.reason.value if error is not None else "",
                "at": time.time(),
            }
        )
    return dataclasses.replace(outcome, counted_as=kind, failure=failure)
