"""The job and aggregation records, and their encoding as the original's Redis hashes.

`Job` mirrors the Go struct field for field (reference 2.1), with the same string encodings,
so a hash written by the original API is read unchanged and a hash we write is readable by
the original (its reader rejects unknown fields: we never add any). Request fields of the
original's later branch (`subpath`, `callback_error_*`) are `JobOptions`, kept in a key of
their own.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import urllib.parse
from collections.abc import Mapping
from enum import StrEnum

from downloader.errors import CorruptJobError as CorruptJobError

#: Limit of an aggregation whose `aggr:<id>` hash is missing (the original's default).
DEFAULT_AGGREGATION_LIMIT = 4
#: Retries after the first attempt when a job does not say (so 3 attempts in all).
DEFAULT_MAX_RETRIES = 2


class State(StrEnum):
    """Download and callback state strings, as stored in `DownloadState`/`CallbackState`."""

    NONE = ""
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCESS = "Success"
    FAILED = "Failed"


#: The Go struct's field order; HMSET writes them in this order.
JOB_FIELDS = (
    "ID",
    "URL",
    "AggrID",
    "MaxRetries",
    "DownloadState",
    "DownloadCount",
    "DownloadMeta",
    "CallbackState",
    "CallbackType",
    "CallbackDst",
    "CallbackURL",
    "DownloadURL",
    "CallbackMeta",
    "CallbackCount",
    "Extra",
    "ResponseCode",
    "MimeType",
    "ExtractImageSize",
    "ImageSize",
    "DownloadTimeout",
    "RequestHeaders",
    "S3Bucket",
    "S3Region",
)


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """What a request may ask beyond the original's job fields (reference Appendix B)."""

    subpath: str = ""
    """Files go under `<root>/<subpath>/<id[0:3]>/<id>` (and the same S3 key and URL)."""
    callback_error_type: str = ""
    callback_error_dst: str = ""
    """Where a failed download is reported instead of the callback destination."""
    max_size: int = 0
    """Largest body this job accepts, in bytes (0: the service's cap); never above that cap."""
    host_limit: int = 0
    """`aggr_host_limit`: downloads at once of the job's host over the fleet that this job
    waits for (0: the service's host limits only); it can lower those, never raise them.
    CLAIM_DOWNLOADS reads it from the encoded options (`"host_limit":N`)."""

    def encode(self) -> str:
        """JSON for Redis; "" when nothing is set, so most jobs store no extra key."""
        # getattr over the field names, not dataclasses.asdict (a deep copy): once per POST
        values = {name: value for name in _OPTION_FIELDS if (value := getattr(self, name))}
        return json.dumps(values, separators=(",", ":")) if values else ""

    @classmethod
    def decode(cls, raw: str | None) -> JobOptions:
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
            return cls(
                subpath=str(values.get("subpath", "")),
                callback_error_type=str(values.get("callback_error_type", "")),
                callback_error_dst=str(values.get("callback_error_dst", "")),
                max_size=int(values.get("max_size", 0)),
                host_limit=int(values.get("host_limit", 0)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise CorruptJobError(f"unreadable job options {raw!r}: {exc}") from exc


_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(JobOptions))


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    """What a successful download measured, for the callback's keys after the original ten.
    Kept in `jobmeta:<id>` (field `Result`), not in the original's hash."""

    sha256: str = ""
    size: int = 0
    content_type: str = ""
    final_url: str = ""

    def encode(self) -> str:
        values = {name: getattr(self, name) for name in _RESULT_FIELDS}  # asdict deep-copies: per job
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | None) -> DownloadResult:
        """Unreadable or missing (a job finished by the original, or by an older version): empty."""
        try:
            values = json.loads(raw or "{}")
            return cls(
                sha256=str(values.get("sha256", "")),
                size=int(values.get("size", 0)),
                content_type=str(values.get("content_type", "")),
                final_url=str(values.get("final_url", "")),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(DownloadResult))


@dataclasses.dataclass
class Job:
    id: str
    url: str
    aggr_id: str
    max_retries: int | None = None
    download_state: State = State.PENDING
    download_count: int = 0
    download_meta: str = ""
    callback_state: State = State.NONE
    callback_type: str = ""
    callback_dst: str = ""
    callback_url: str = ""
    download_url: str = ""
    callback_meta: str = ""
    callback_count: int = 0
    extra: str = ""
    response_code: int = 0
    mime_type: str = ""
    extract_image_size: bool = False
    image_size: str = ""
    download_timeout: int = 0
    request_headers: dict[str, str] | None = None
    s3_bucket: str = ""
    s3_region: str = ""
    options: JobOptions = dataclasses.field(default_factory=JobOptions)
    """Not part of the hash (see `JobOptions`)."""

    # --- derived -----------------------------------------------------------------

    def callback_destination(self, *, succeeded: bool) -> tuple[str, str] | None:
        """(backend name, destination) of the callback for this outcome, None when there is none.

        Failed downloads go to the error destination when there is one (its type defaults to
        `callback_type`); otherwise the legacy `callback_url` wins, as in the original.
        """
        if not succeeded and self.options.callback_error_dst:
            return self.options.callback_error_type or self.callback_type, self.options.callback_error_dst
        if self.callback_url:
            return "http", self.callback_url
        if self.callback_dst:
            return self.callback_type, self.callback_dst
        return None

    def retry_limit(self, default: int = DEFAULT_MAX_RETRIES) -> int:
        """Retries after the first attempt: the job's own max_retries, else `default`."""
        return default if self.max_retries is None else self.max_retries

    @property
    def relative_path(self) -> str:
        """Its file's key in storage: `[<subpath>/]<id[0:3]>/<id>`."""
        return relative_path(self.id, self.options.subpath)

    def public_download_url(self) -> str:
        """The callback's `download_url`: the stored base joined with the relative path.

        Computed, never stored back, so retried callbacks do not grow it (bug 10.1.1).
        """
        if self.download_state != State.SUCCESS or not self.download_url:
            return ""
        return join_url(self.download_url, self.relative_path)

    # --- Redis encoding ----------------------------------------------------------

    def to_hash(self) -> dict[str, str]:
        return {
            "ID": self.id,
            "URL": self.url,
            "AggrID": self.aggr_id,
            "MaxRetries": "null" if self.max_retries is None else str(self.max_retries),
            "DownloadState": str(self.download_state),
            "DownloadCount": str(self.download_count),
            "DownloadMeta": self.download_meta,
            "CallbackState": str(self.callback_state),
            "CallbackType": self.callback_type,
            "CallbackDst": self.callback_dst,
            "CallbackURL": self.callback_url,
            "DownloadURL": self.download_url,
            "CallbackMeta": self.callback_meta,
            "CallbackCount": str(self.callback_count),
            "Extra": self.extra,
            "ResponseCode": str(self.response_code),
            "MimeType": self.mime_type,
            "ExtractImageSize": "1" if self.extract_image_size else "0",
            "ImageSize": self.image_size,
            "DownloadTimeout": str(self.download_timeout),
            "RequestHeaders": json.dumps(self.request_headers, separators=(",", ":")),
            "S3Bucket": self.s3_bucket,
            "S3Region": self.s3_region,
        }

    @classmethod
    def from_hash(cls, raw: Mapping[str, str], options: str | None = None) -> Job:
        """Decode the original's hash (and our encoded `JobOptions`, when read with it)."""
        unknown = set(raw) - set(JOB_FIELDS)
        if unknown:
            field = sorted(unknown)[0]
            raise CorruptJobError(f"Field {field} with value {raw[field]} was not found in Job struct")
        get = raw.get
        try:
            return cls(
                id=get("ID", ""),
                url=get("URL", ""),
                aggr_id=get("AggrID", ""),
                max_retries=_nullable_int(get("MaxRetries", "null")),
                download_state=_state(get("DownloadState", "")),
                download_count=_int(get("DownloadCount", "0")),
                download_meta=get("DownloadMeta", ""),
                callback_state=_state(get("CallbackState", "")),
                callback_type=get("CallbackType", ""),
                callback_dst=get("CallbackDst", ""),
                callback_url=get("CallbackURL", ""),
                download_url=get("DownloadURL", ""),
                callback_meta=get("CallbackMeta", ""),
                callback_count=_int(get("CallbackCount", "0")),
                extra=get("Extra", ""),
                response_code=_int(get("ResponseCode", "0")),
                mime_type=get("MimeType", ""),
                extract_image_size=get("ExtractImageSize", "0") in ("1", "true"),
                image_size=get("ImageSize", ""),
                download_timeout=_int(get("DownloadTimeout", "0")),
                request_headers=_headers(get("RequestHeaders", "null")),
                s3_bucket=get("S3Bucket", ""),
                s3_region=get("S3Region", ""),
                options=JobOptions.decode(options),
            )
        except (ValueError, TypeError) as exc:
            raise CorruptJobError(f"job {get('ID', '?')}: {exc}") from exc

    def job_string(self) -> str:
        """The original's `<JobString>` rendering, used in some error texts and logs."""
        headers = " ".join(f"{k}:{v}" for k, v in sorted((self.request_headers or {}).items()))
        return (
            f"Job{{ID:{self.id}, Aggr:{self.aggr_id}, URL:{self.url}, "
            f"ExtractImageSize:{'true' if self.extract_image_size else 'false'}, "
            f"ImageSize: {self.image_size}, callback_url:{self.callback_url}, "
            f"callback_type:{self.callback_type}, callback_dst:{self.callback_dst}, "
            f"Timeout:{self.download_timeout}, RequestHeaders:map[{headers}], "
            f"DownloadURL:{self.download_url}}}"
        )


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """An `aggr:<id>` hash. `expires_at` is the original processor's lease field."""

    id: str
    limit: int = DEFAULT_AGGREGATION_LIMIT
    proxy: str = ""
    expires_at: str = ""

    def to_hash(self) -> dict[str, str]:
        return {"ID": self.id, "Limit": str(self.limit), "Proxy": self.proxy, "ExpiresAt": self.expires_at}

    @classmethod
    def from_hash(cls, aggr_id: str, raw: Mapping[str, str]) -> Aggregation:
        """Missing hash or fields fall back to the original's defaults (limit 4, no proxy)."""
        try:
            limit = int(raw.get("Limit") or DEFAULT_AGGREGATION_LIMIT)
        except ValueError:
            limit = DEFAULT_AGGREGATION_LIMIT
        return cls(
            id=raw.get("ID") or aggr_id,
            limit=limit if limit > 0 else DEFAULT_AGGREGATION_LIMIT,
            proxy=raw.get("Proxy", ""),
            expires_at=raw.get("ExpiresAt", ""),
        )


def relative_path(job_id: str, subpath: str = "") -> str:
    """Where a job's file lives under the storage root (and its S3 key): `<id[0:3]>/<id>`,
    under `subpath` when the request gave one (validated: no `.`/`..` segments)."""
    key = f"{job_id[:3]}/{job_id}"
    subpath = subpath.strip("/")
    return f"{subpath}/{key}" if subpath else key


def join_url(base: str, relative: str) -> str:
    """Go's `path.Join(u.Path, relative)` on a URL: the base's query string is kept."""
    parts = urllib.parse.urlsplit(base)
    path = posixpath.normpath(posixpath.join(parts.path or "/", relative))
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _int(value: str) -> int:
    return int(value) if value else 0


def _nullable_int(value: str) -> int | None:
    return None if value in ("", "null") else int(value)


def _state(value: str) -> State:
    return State(value)


def _headers(value: str) -> dict[str, str] | None:
    if value in ("", "null"):
        return None
    decoded = json.loads(value)
    if decoded is None:
        return None
    if not isinstance(decoded, dict):
        raise ValueError("RequestHeaders is not a JSON object")
    return {str(k): str(v) for k, v in decoded.items()}
