"""Response models and the documented request body of the API (for /openapi.json).

POST /download parses its body by hand (the original's reason texts and validation order
cannot be had from a pydantic model), so its schema here documents, it does not validate.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Created(BaseModel):
    id: str = Field(description="The job id: 14 url-safe characters", examples=["NSb4FOAs9fVaQw"])


class DownloadState(BaseModel):
    state: str = Field(description="Pending, InProgress, Success or Failed")
    attempts: int = Field(description="Attempts counted so far")
    max_retries: int | None = Field(description="Retries after the first attempt (null: the default)")
    response_code: int = Field(description="HTTP status of the last attempt, 0 when there was no response")
    error: str = Field(description="Error text of a failed download")
    image_size: str
    download_url: str
    sha256: str = Field(default="", description="Of the stored file, once downloaded")
    size: int = Field(default=0, description="Of the stored file in bytes, once downloaded")


class CallbackState(BaseModel):
    state: str = Field(
        description='"", Pending, InProgress, Failed, or Delivered (shown until its file is deleted)'
    )
    attempts: int
    error: str
    backend: str
    destination: str
    delivered_at: str | None = Field(default=None, description="When the callback was delivered")


class JobView(BaseModel):
    id: str
    aggr_id: str
    url: str
    state: str = Field(
        description="queued, waiting_retry, in_progress, succeeded, failed, callback_pending, "
        "callback_failed, delivered (until its file is deleted), "
        "dead_lettered (its stored hash cannot be read: set aside, see dead_letter)"
    )
    download: DownloadState
    callback: CallbackState
    errors: list[str] = Field(description="Errors of past attempts, oldest first")
    crashes: int = Field(description="Times a worker holding the job was lost")
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    finished_at: str | None
    next_attempt_at: str | None = Field(
        description="When a queued job becomes eligible, or when its callback's next attempt is due"
    )
    lease_expires_at: str | None = Field(description="While a worker holds the job")
    dead_letter: str | None = Field(
        default=None, description="Why a worker set the job aside unread (state dead_lettered)"
    )


class AggregationQueue(BaseModel):
    name: str = Field(description="jobs:<aggregation id>")
    size: int


_STRING = {"type": "string"}
DOWNLOAD_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["url", "aggr_id", "aggr_limit"],
                # somewhere to report to, or a bucket of its own (where a callback is optional)
                "anyOf": [
                    {"required": ["callback_url"]},
                    {"required": ["callback_type", "callback_dst"]},
                    {"required": ["s3_bucket", "s3_region"]},
                ],
                "properties": {
                    "url": {"type": "string", "format": "uri", "description": "Absolute URL to download"},
                    "aggr_id": {"type": "string", "minLength": 1},
                    "aggr_limit": {
                        "type": "number",
                        "minimum": 1,
                        "description": "Concurrent downloads of the aggregation across the fleet (truncated)",
                    },
                    "aggr_proxy": _STRING,
                    "callback_url": {
                        "type": "string",
                        "format": "uri",
                        "description": "Deprecated: HTTP callback URL",
                    },
                    "callback_type": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Backend: http, kafka or sqs",
                    },
                    "callback_dst": {
                        "type": "string",
                        "minLength": 1,
                        "description": "URL, Kafka topic or SQS queue URL",
                    },
                    "extra": {"type": "string", "description": "Opaque, echoed in the callback"},
                    "mime_type": {"type": "string", "description": "Comma-separated globs, ! negates"},
                    "max_retries": {"type": "number", "minimum": 0},
                    "extract_image_size": {"type": "boolean"},
                    "download_timeout": {
                        "type": "number",
                        "minimum": 1,
                        "description": "Seconds for the whole download (truncated); a value above"
                        " DOWNLOADER_DOWNLOAD_TIMEOUT_SECONDS is accepted and capped to it",
                    },
                    "request_headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "s3_bucket": _STRING,
                    "s3_region": _STRING,
                    "subpath": {
                        "type": "string",
                        "description": "Store under <root>/<subpath>/<id[0:3]>/<id>; no . or .. segments",
                    },
                    "callback_error_type": {
                        "type": "string",
                        "description": "Backend of failed-download callbacks (default: callback_type)",
                    },
                    "callback_error_dst": {
                        "type": "string",
                        "description": "Where failed downloads are reported instead of callback_dst",
                    },
                    "max_size": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Largest body in bytes this job accepts; at most"
                        " DOWNLOADER_MAX_DOWNLOAD_BYTES (400 above it)",
                    },
                    "aggr_host_limit": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Downloads at once of this job's host across the fleet that it"
                        " waits for; can lower DOWNLOADER_HOST_LIMIT(S), never raise them",
                    },
                },
            }
        }
    },
}


# --- GET /ui/overview: what the web page shows -----------------------------------------


class InstanceView(BaseModel):
    id: str = Field(description="The process' instance id (a worker's is its lease token)")
    host: str
    pid: int
    version: str
    started_at: str | None
    uptime_seconds: float
    last_seen_seconds: float = Field(description="Seconds since its last heartbeat")


class AggregationRow(BaseModel):
    id: str
    limit: int | None = Field(
        description="Fleet-wide concurrent downloads (aggr:<id> Limit); null once an idle"
        " aggregation's hash is deleted"
    )
    paused: bool
    pending: int = Field(description="Queued jobs, including those waiting for a retry")
    in_flight: int = Field(description="Jobs being downloaded now (live leases)")
    jobs_per_minute: float = Field(description="Finished downloads per minute over the recent window")
    error_rate: float | None = Field(
        description="Share of attempts in the recent window that failed or will be retried (null: none)"
    )
    succeeded: int = Field(description="Downloads that succeeded in the recent window")
    failed: int = Field(description="Jobs that ended Failed in the recent window")
    retried: int = Field(description="Attempts that failed and were queued again in the recent window")
    latency_p50: float | None = Field(
        default=None,
        description="Median end-to-end seconds (enqueue to callback delivered) of the jobs that "
        "ended in the recent window, at the histogram's bucket bound (null: none ended)",
    )
    latency_p95: float | None = Field(default=None, description="95th percentile, as latency_p50")


class Totals(BaseModel):
    aggregations: int = Field(description="Aggregations with queued or running jobs")
    pending: int
    in_flight: int
    callbacks_queued: int | None = Field(
        description="Callbacks waiting or being delivered (null for a scoped key)"
    )
    succeeded: int = Field(description="Over the series (last `series_minutes` minutes)")
    failed: int
    retried: int
    jobs_per_minute: float = Field(description="Over the recent window")


class MinutePoint(BaseModel):
    minute: str = Field(description="Start of the minute (ISO 8601, UTC)")
    succeeded: int
    failed: int
    retried: int


class FailureView(BaseModel):
    job_id: str
    aggr_id: str
    url: str
    error: str
    response_code: int
    at: str | None
    phase: str = Field("", description="The step of the attempt that failed (empty: not a download failure)")
    reason: str = Field("", description="The failure's class, as the metrics' `reason` label (empty: none)")


class AggregationMinute(BaseModel):
    minute: str = Field(description="Start of the minute (ISO 8601, UTC)")
    finished: int = Field(description="Downloads that ended (succeeded or Failed) in the minute")
    failed: int
    latency_p50: float | None = Field(description="Of the jobs that ended in the minute (seconds)")
    latency_p95: float | None


class AggregationSeries(BaseModel):
    id: str
    points: list[AggregationMinute] = Field(description="Oldest first, series_minutes long")


class CallbackHost(BaseModel):
    host: str = Field(description="An HTTP destination's host; else backend:topic or backend:host")
    pending: int = Field(description="Callbacks queued or being delivered (of the sample read)")
    retried: int = Field(description="Attempts that failed and will be retried, over the series")
    failed: int = Field(description="Callbacks that failed for good, over the series")


class Overview(BaseModel):
    generated_at: str
    version: str
    instances: dict[str, list[InstanceView]] = Field(description="Live instances by role")
    aggregations: list[AggregationRow] = Field(description="Largest backlog first, at most aggregations_cap")
    aggregations_cap: int
    window_minutes: int = Field(description="The recent window of rates and error rates")
    series_minutes: int
    totals: Totals
    series: list[MinutePoint] = Field(description="Finished attempts per minute, oldest first")
    recent_failures: list[FailureView] = Field(description="Jobs that ended Failed, newest first")
    operator_expected: bool = Field(
        default=False,
        description="Whether an operator should be running: the API has Kubernetes access or an "
        "operator manages aggregations (the dashboard warns about a missing one only then)",
    )
    aggregation_series: list[AggregationSeries] = Field(
        default_factory=list,
        description="Per-minute finished jobs and end-to-end latency of the busiest aggregations",
    )
    callback_hosts: list[CallbackHost] | None = Field(
        default=None, description="Callbacks by destination host, most pending first (null for a scoped key)"
    )
    callback_hosts_sampled: bool = Field(
        default=False, description="More callbacks are queued than were read: pending counts a sample"
    )


# --- GET /ui/hosts: the dashboard's "Hosts" card -----------------------------------------


class HostRow(BaseModel):
    host: str = Field(description="Origin host: the `host[:port]` of job URLs")
    in_flight: int = Field(description="Downloads leased for the host now, over the whole fleet")
    limit: int | None = Field(description="Downloads at once the settings allow it (null: unlimited)")
    requests_per_second: float | None = Field(description="Its request rate limit (null: none)")
    paused_until: str | None = Field(description="End of a Retry-After pause (ISO 8601; null: not paused)")


class HostsView(BaseModel):
    hosts: list[HostRow] = Field(description="Busiest first, at most `cap`; empty for a scoped key")
    cap: int
    scoped: bool = Field(description="The API key covers some aggregations only: hosts are not shown")
