"""What the Python client sends and reads: a job request, the answer to it, a job's status and
a callback's payload, as typed values. Pure data and its JSON mapping, no I/O; unknown keys in
an answer are ignored, so a newer service does not break an older client.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from downloader.errors import DownloaderError


class ClientError(DownloaderError):
    """The Downloader API could not be asked, or answered with an error."""


class ApiError(ClientError):
    """The API answered `status` with `text` (the service's plain-text reason)."""

    def __init__(self, status: int, text: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {text.strip()}")
        self.status = status
        self.text = text


class Unreachable(ClientError):
    """No answer: connecting, sending or reading failed (the request may or may not have run)."""


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """A POST /download body. None leaves a field out (the service's default); `fields` adds
    any other request field as is (a newer service's), and wins over the named ones."""

    url: str
    aggr_id: str
    aggr_limit: int
    callback_url: str | None = None
    callback_type: str | None = None
    callback_dst: str | None = None
    callback_error_type: str | None = None
    callback_error_dst: str | None = None
    aggr_proxy: str | None = None
    extra: str | None = None
    mime_type: str | None = None
    max_retries: int | None = None
    extract_image_size: bool | None = None
    download_timeout: int | None = None
    request_headers: Mapping[str, str] | None = None
    s3_bucket: str | None = None
    s3_region: str | None = None
    subpath: str | None = None
    max_size: int | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        named = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "fields"}
        out = {name: value for name, value in named.items() if value is not None}
        if self.request_headers is not None:
            out["request_headers"] = dict(self.request_headers)
        out.update(self.fields)
        return out


@dataclasses.dataclass(frozen=True)
class Enqueued:
    """A queued job: its id; `replayed` when an earlier request with the same idempotency key
    had queued it (nothing new was queued)."""

    id: str
    replayed: bool = False


@dataclasses.dataclass(frozen=True)
class DownloadInfo:
    state: str
    """Pending, InProgress, Success or Failed."""
    attempts: int
    max_retries: int | None
    response_code: int
    error: str
    image_size: str
    download_url: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class CallbackInfo:
    state: str
    """"", Pending, InProgress, Failed or Delivered."""
    attempts: int
    error: str
    backend: str
    destination: str
    delivered_at: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """GET /jobs/<id>: `state` is one of queued, waiting_retry, in_progress, succeeded, failed,
    callback_pending, callback_failed, delivered, dead_lettered."""

    id: str
    aggr_id: str
    url: str
    state: str
    download: DownloadInfo
    callback: CallbackInfo
    errors: list[str]
    crashes: int
    created_at: datetime.datetime | None
    updated_at: datetime.datetime | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    next_attempt_at: datetime.datetime | None
    lease_expires_at: datetime.datetime | None
    dead_letter: str | None
    raw: Mapping[str, Any]
    """The whole answer, for fields newer than this client."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobStatus:
        download: Mapping[str, Any] = data.get("download") or {}
        callback: Mapping[str, Any] = data.get("callback") or {}
        return cls(
            id=str(data.get("id", "")),
            aggr_id=str(data.get("aggr_id", "")),
            url=str(data.get("url", "")),
            state=str(data.get("state", "")),
            download=DownloadInfo(
                state=str(download.get("state", "")),
                attempts=int(download.get("attempts") or 0),
                max_retries=None if download.get("max_retries") is None else int(download["max_retries"]),
                response_code=int(download.get("response_code") or 0),
                error=str(download.get("error", "")),
                image_size=str(download.get("image_size", "")),
                download_url=str(download.get("download_url", "")),
                sha256=str(download.get("sha256", "")),
                size=int(download.get("size") or 0),
            ),
            callback=CallbackInfo(
                state=str(callback.get("state", "")),
                attempts=int(callback.get("attempts") or 0),
                error=str(callback.get("error", "")),
                backend=str(callback.get("backend", "")),
                destination=str(callback.get("destination", "")),
                delivered_at=_time(callback.get("delivered_at")),
            ),
            errors=[str(e) for e in data.get("errors") or []],
            crashes=int(data.get("crashes") or 0),
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            next_attempt_at=_time(data.get("next_attempt_at")),
            lease_expires_at=_time(data.get("lease_expires_at")),
            dead_letter=None if data.get("dead_letter") is None else str(data["dead_letter"]),
            raw=dict(data),
        )


@dataclasses.dataclass(frozen=True)
class Callback:
    """A callback's payload (the original's ten keys, then ours when the service sends them)."""

    success: bool
    error: str
    extra: str
    image_size: str
    resource_url: str
    download_url: str
    job_id: str
    response_code: int
    delivered: bool
    delivery_error: str
    sha256: str
    size: int
    content_type: str
    final_url: str
    raw: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: bytes | str) -> Callback:
        """Parse a callback's raw body; ClientError when it is not a callback's JSON object."""
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ClientError(f"callback body is not JSON: {exc}") from exc
        if not isinstance(data, dict) or "job_id" not in data:
            raise ClientError("callback body is not a Downloader callback (no job_id)")
        return cls(
            success=bool(data.get("success")),
            error=str(data.get("error", "")),
            extra=str(data.get("extra", "")),
            image_size=str(data.get("image_size", "")),
            resource_url=str(data.get("resource_url", "")),
            download_url=str(data.get("download_url", "")),
            job_id=str(data["job_id"]),
            response_code=int(data.get("response_code") or 0),
            delivered=bool(data.get("delivered")),
            delivery_error=str(data.get("delivery_error", "")),
            sha256=str(data.get("sha256", "")),
            size=int(data.get("size") or 0),
            content_type=str(data.get("content_type", "")),
            final_url=str(data.get("final_url", "")),
            raw=data,
        )


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
