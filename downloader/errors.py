"""The service's one exception tree; third-party errors are translated into it at the edges.

    DownloaderError
    ├── ConfigurationError        settings that cannot work (the CLI prints one line, exits 2)
    │   ├── InvalidApiKeys        DOWNLOADER_API_KEYS cannot be parsed (names the entry, not its token)
    │   └── DirectoryInUse        (embedded_redis) another `downloader up` holds the data directory
    ├── RequestRejected           a client's body failed validation (API answers 400)
    ├── InvalidPattern            a `mime_type` pattern item is not a glob (also a ValueError)
    ├── JobNotFound               no `job:<id>` hash (or one without an ID)
    ├── CorruptJobError           a `job:<id>` hash that cannot be decoded (also a ValueError)
    ├── StoreError                Redis failed or is unreachable (wraps redis.RedisError)
    │   └── NotReplicated         (store) too few replicas acknowledged a new job: undone
    ├── DownloadError             one download attempt failed: phase, reason, retriable, internal
    │   └── Interrupted           shutdown or a sick disk stopped the attempt: no attempt used
    ├── ImageSizeError            an image's header cannot be read (also a ValueError)
    ├── DestinationNotAllowed     a download or callback would reach a non-public address
    ├── RequestError              (outbound) an HTTP request failed (also an OSError)
    │   ├── ConnectionFailed      connecting, sending or reading the response head failed
    │   │   ├── TLSError          a TLS handshake or certificate failure
    │   │   ├── ProxyFailed       the proxy could not be reached or refused the tunnel
    │   │   └── ConnectTimeout    connecting timed out (a RequestTimeout too)
    │   ├── RequestTimeout        a connect or read timeout
    │   │   └── ReadTimeout       the response head did not arrive in time
    │   ├── BodyError             a body read in full was cut short or undecodable
    │   ├── TooManyRedirects      more redirects than allowed
    │   └── InvalidRequest        URL, scheme, header or proxy URL unusable (also a ValueError)
    ├── StorageError              the file could not be stored or deleted
    ├── NotificationError         a callback was not delivered
    │   └── UnknownDestination    the destination does not exist (Kafka: unknown topic)
    ├── ClusterError              the Kubernetes API refused or could not be reached
    └── ClientError               (client) the Python client's call of the API failed
        ├── ApiError              (client) the API answered an error status (status, text)
        └── Unreachable           (client) no answer: connecting, sending or reading failed

Classes marked (module) are defined next to the code that raises them; the rest live here
and are imported where they are raised. The transport errors of `outbound` are translated
into `DownloadError` (downloads) and `NotificationError` (callbacks) by their callers.

A failed attempt is data: `DownloadError.phase` (an `AttemptPhase`: the step that failed)
and `DownloadError.reason` (a `FailureReason`: a small fixed set, the metric label) are set
where the error is raised. Metrics, stats, retry decisions and the dashboard read these
fields and never the message text. `DownloadError` renders the original's text shape, which
clients match on (`Error while <phase>, <message>, retriable: <bool>, internal: <bool>`):
that text is unchanged, the phase's value being the original's words for it.
"""

from __future__ import annotations

import enum

from downloader.jobs import gourl


class AttemptPhase(enum.StrEnum):
    """The step of a download attempt that failed. The values are the original's words for
    them, rendered in the error text ("Error while <phase>, ...")."""

    VALIDATING_DESTINATION = "validating destination"
    CREATING_REQUEST = "creating request"
    PERFORMING_REQUEST = "performing request"
    PROCESSING_RESPONSE = "processing response"
    CREATING_TMP_FILE = "creating tmp file"
    DOWNLOADING_FILE = "downloading file"
    WRITING_TMP_FILE = "writing tmp file"
    SYNCING_TO_DISK = "syncing to disk"
    VALIDATING_MIME_TYPE = "validating mime type"
    EXTRACTING_IMAGE_SIZE = "extracting image-size"
    STORING_FILE_S3 = "storing file to job specified AWS S3 bucket"
    STORING_FILE_DEFAULT = "storing file to default storage backend"


class FailureReason(enum.StrEnum):
    """Why an attempt failed, in a few classes: the `reason` label of the failure metrics."""

    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    NETWORK = "network"
    TLS = "tls"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    MIME = "mime"
    IMAGE = "image"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    STORAGE = "storage"
    OTHER = "other"
    INTERRUPTED = "interrupted"
    """Stopped from our side (`Interrupted`): not a failure, never counted as one."""


def status_reason(code: int) -> FailureReason:
    """The reason of an unwanted HTTP answer: its status class (a 204 or 3xx is "other")."""
    if 400 <= code < 500:
        return FailureReason.HTTP_4XX
    if 500 <= code < 600:
        return FailureReason.HTTP_5XX
    return FailureReason.OTHER


class DownloaderError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigurationError(DownloaderError):
    """A setting is invalid; the message names it."""


class InvalidApiKeys(ConfigurationError):
    """The setting cannot be parsed; the message names the entry by position, never its token.
    Being a ConfigurationError, the CLI prints it as one line and exits 2."""


class RequestRejected(DownloaderError):
    """A POST /download body is invalid. `target` is "Job" or "Aggregation" (the original
    reports which of the two decodings failed)."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(reason)
        self.target = target
        self.reason = reason


class InvalidPattern(DownloaderError, ValueError):
    """One item of a `mime_type` pattern is not a valid glob."""

    def __init__(self, item: str) -> None:
        # The text is the original's API answer, byte for byte.
        super().__init__(f"Invalid MimeType Pattern, {gourl.go_quote(item)}")
        self.item = item


class JobNotFound(DownloaderError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Error fetching {job_id} from Redis: Not Found")
        self.job_id = job_id


class CorruptJobError(DownloaderError, ValueError):
    """A `job:<id>` hash that cannot be decoded (unknown field or bad number)."""


class StoreError(DownloaderError):
    """Redis answered with an error or could not be reached."""


class DownloadError(DownloaderError):
    """One failed download attempt, classified as the original does (reference 3.4).

    `phase` (the failed step) and `reason` (the failure's class) are set where it is raised;
    `message` is the text after the phase. A phase given as its text is taken as that phase.
    """

    def __init__(
        self,
        phase: AttemptPhase | str,
        message: str,
        *,
        reason: FailureReason,
        retriable: bool,
        internal: bool = False,
        response_code: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.phase = AttemptPhase(phase)
        self.reason = FailureReason(reason)
        self.message = message
        self.retriable = retriable
        self.internal = internal
        self.response_code = response_code
        self.retry_after = retry_after
        """Seconds a 429 or 503 asked us to wait (its Retry-After, uncapped); None: not said."""

    def __str__(self) -> str:
        return (
            f"Error while {self.phase.value}, {self.message}, "
            f"retriable: {'true' if self.retriable else 'false'}, "
            f"internal: {'true' if self.internal else 'false'}"
        )


class Interrupted(DownloadError):
    """The attempt was stopped from our side (shutdown, sick disk); it is not counted."""

    def __init__(self, why: str) -> None:
        super().__init__(
            AttemptPhase.DOWNLOADING_FILE,
            why,
            reason=FailureReason.INTERRUPTED,
            retriable=True,
            internal=True,
        )


class ImageSizeError(DownloaderError, ValueError):
    """The header of a jpeg, png or gif file could not be read; the message says why."""


class DestinationNotAllowed(DownloaderError):
    """A request would reach a non-public address (loopback, private, link-local, ...):
    refused before any connection. The text starts "destination address not allowed"."""


class StorageError(DownloaderError):
    """Storing or deleting a file failed."""


class NotificationError(DownloaderError):
    """A callback was not delivered; the message is what the client's job will show."""


class UnknownDestination(NotificationError):
    """The destination does not exist (a Kafka topic the brokers do not know); counted in
    stats as `unknownTopicOrPartition` and retried like any undelivered callback."""


class ClusterError(DownloaderError):
    """The Kubernetes API refused or could not be reached."""
