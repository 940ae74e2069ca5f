"""A small typed Python client of the Downloader API (the Ruby client's counterpart).

    from downloader.client import Client, JobRequest, verify_signature

`Client` (blocking) and `AsyncClient` enqueue one job or many (with idempotency keys), read a
job's status and retry a failed callback; `verify_signature` checks a callback's
X-Downloader-Signature and `Callback.from_body` reads its payload. Needs httpx only.
"""

from downloader.client.http import AsyncClient, Client
from downloader.client.models import (
    ApiError,
    Callback,
    CallbackInfo,
    ClientError,
    DownloadInfo,
    Enqueued,
    JobRequest,
    JobStatus,
    Unreachable,
)
from downloader.client.signatures import DELIVERY_HEADER, SIGNATURE_HEADER, verify_request, verify_signature

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "ApiError",
    "AsyncClient",
    "Callback",
    "CallbackInfo",
    "Client",
    "ClientError",
    "DownloadInfo",
    "Enqueued",
    "JobRequest",
    "JobStatus",
    "Unreachable",
    "verify_request",
    "verify_signature",
]
