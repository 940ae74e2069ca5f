"""Callbacks: the payload the original sends (reference 4.3) and its HTTP delivery.

The payload keeps the original's ten keys in their order, so existing clients parse it
unchanged; ours follow them. A backend delivers one `Message` synchronously: it returns only once the
destination has it (HTTP 2xx, Kafka delivery report, SQS message id). Kafka and SQS live in
modules of their own, imported only when enabled.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import urllib3

from downloader.errors import DestinationNotAllowed, NotificationError
from downloader.fetching.outbound import Outbound, Policy, RequestError, Watchdog
from downloader.jobs.models import DownloadResult, Job, State
from downloader.version import __version__

if TYPE_CHECKING:
    pass


def payload(job: Job, result: DownloadResult | None = None) -> dict[str, Any]:
    """The original's ten keys in its order, then ours: what a successful download measured
    (`sha256`, `size`, `content_type`, `final_url`; empty on failure) and `attempts`."""
    measured = result if result is not None and job.download_state == State.SUCCESS else DownloadResult()
    return {
        "success": job.download_state == State.SUCCESS,
        "error": job.download_meta,
        "extra": job.extra,
        "image_size": job.image_size,
        "resource_url": job.url,
        "download_url": job.public_download_url(),
        "job_id": job.id,
        "response_code": job.response_code,
        "delivered": True,
        "delivery_error": "",
        "sha256": measured.sha256,
        "size": measured.size,
        "content_type": measured.content_type,
        "final_url": measured.final_url,
        "attempts": job.download_count,
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def destination(job: Job) -> tuple[str, str]:
    """(backend name, destination) of a finished job's callback; ("", "") when it has none."""
    return job.callback_destination(succeeded=job.download_state == State.SUCCESS) or ("", "")


def destination_host(backend: str, where: str) -> str:
    """What the dashboard groups callbacks by: an HTTP destination's host, else the backend
    and its destination (a Kafka topic, an SQS queue URL's host), capped in length."""
    if backend == "http" or where.startswith(("http://", "https://")):
        try:
            host = urllib.parse.urlsplit(where).hostname or ""
        except ValueError:
            host = ""
        if backend == "http":
            return host[:255] or "(unparsable)"
        return f"{backend}:{host or where}"[:255]
    return f"{backend or '?'}:{where}"[:255]


@dataclasses.dataclass(frozen=True)
class Message:
    """One callback: the encoded payload for `destination` (URL, topic or queue URL), and
    headers (HTTP headers, Kafka message headers, SQS message attributes)."""

    job_id: str
    destination: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Backend(Protocol):
    def deliver(self, message: Message) -> None:
        """Return once delivered; raise NotificationError otherwise."""

    def close(self) -> None:
        """Flush and release connections; called once, at shutdown."""


class HttpBackend:
    """POST the payload as JSON; any 2xx delivers. The answer's body is read (at most
    EXCHANGE_BODY_CAP bytes) and its connection kept for the next callback (the original
    leaked one socket per callback, bug 10.2.10).

    `timeout` bounds the whole delivery (connect, send, status, body), as the original's
    `backends.http.timeout` did: a watchdog shuts the socket of a receiver that trickles its
    answer, which a per-read timeout never would.
    """

    def __init__(self, timeout: float, pool_size: int, policy: Policy | None = None) -> None:
        self.timeout = timeout
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        # Callback URLs are the clients' choice: no callback reaches a non-public address
        # (policy None: the strict default), see downloader.fetching.outbound.
        self.outbound = Outbound(policy)
        self.client = self.outbound.client(pool_connections=32, pool_maxsize=pool_size)
        self.watchdog = Watchdog("callback-deadlines")

    def deliver(self, message: Message) -> None:
        destination = message.destination
        headers = {**message.headers, "Content-Type": "application/json", "User-Agent": _USER_AGENT}
        with self.watchdog.watch(self.timeout) as watched:
            try:
                # Redirects are not followed (each hop would need the address checks again, and
                # Go's POST-to-GET rewriting would not deliver the payload): a 3xx is undelivered.
                resp = self.client.exchange(
                    "POST",
                    destination,
                    headers=headers,
                    body=message.body,
                    timeout=self._timeout,
                    watched=watched,
                )
            except (RequestError, DestinationNotAllowed) as exc:
                if watched.expired:
                    raise NotificationError(f'Post "{destination}": {DEADLINE_EXCEEDED}') from exc
                raise NotificationError(f'Post "{destination}": {exc}') from exc
        if not 200 <= resp.status < 300:
            raise NotificationError(f"Received Status: {resp.status} {resp.reason}".rstrip())

    def close(self) -> None:
        """Ends the deliveries still in flight (shutting down) and closes the connections."""
        self.watchdog.abort_all()
        self.client.close()


#: Go's text for a request that outlived its client's timeout, which the original's callbacks showed.
DEADLINE_EXCEEDED = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
_USER_AGENT = f"Downloader/{__version__}"
