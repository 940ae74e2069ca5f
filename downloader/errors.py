"""The service's one exception tree; third-party errors are translated into it at the edges.

    DownloaderError
    ├── ConfigurationError        settings that cannot work (the CLI prints one line, exits 2)
    ├── RequestRejected           a client's body failed validation (API answers 400)
    ├── JobNotFound               no `job:<id>` hash (or one without an ID)
    ├── StoreError                Redis failed or is unreachable (wraps redis.RedisError)
    ├── DownloadError             one download attempt failed: phase, retriable, internal
    │   └── Interrupted           shutdown or a sick disk stopped the attempt: no attempt used
    ├── DestinationNotAllowed     a download or callback would reach a non-public address
    ├── StorageError              the file could not be stored or deleted
    └── NotificationError         a callback was not delivered
        └── UnknownDestination    the destination does not exist (Kafka: unknown topic)

`DownloadError` renders the original's text shape, which clients match on
(`Error while <phase>, <message>, retriable: <bool>, internal: <bool>`).
"""

from __future__ import annotations


class DownloaderError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigurationError(DownloaderError):
    """A setting is invalid; the message names it."""


class RequestRejected(DownloaderError):
    """A POST /download body is invalid. `target` is "Job" or "Aggregation" (the original
    reports which of the two decodings failed)."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(reason)
        self.target = target
        self.reason = reason


class JobNotFound(DownloaderError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Error fetching {job_id} from Redis: Not Found")
        self.job_id = job_id


class StoreError(DownloaderError):
    """Redis answered with an error or could not be reached."""


class DownloadError(DownloaderError):
    """One failed download attempt, classified as the original does (reference 3.4)."""

    def __init__(
        self, phase: str, message: str, *, retriable: bool, internal: bool = False, response_code: int = 0
    ) -> None:
        super().__init__(message)
        self.phase = phase
        self.message = message
        self.retriable = retriable
        self.internal = internal
        self.response_code = response_code

    def __str__(self) -> str:
        return (
            f"Error while {self.phase}, {self.message}, "
            f"retriable: {'true' if self.retriable else 'false'}, "
            f"internal: {'true' if self.internal else 'false'}"
        )


class Interrupted(DownloadError):
    """The attempt was stopped from our side (shutdown, sick disk); it is not counted."""

    def __init__(self, why: str) -> None:
        super().__init__("downloading file", why, retriable=True, internal=True)


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
