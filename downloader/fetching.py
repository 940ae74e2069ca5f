"""One download attempt: GET the URL with requests, stream it to `<tmp>/<id>.tmp`, sniff and fsync.

Failures become `DownloadError`s classified as the original does (reference 3.3-3.4), with
its fixes: TLS errors are known by exception type, 3xx/204 answers are not stored as files,
and every attempt has a total deadline, a redirect cap and a size cap. A watchdog thread
(`Fetcher.enforce_deadlines`) aborts sockets of attempts that overrun or are cancelled.
Every request and redirect hop goes through `downloader.outbound`: a non-public destination
fails terminally in phase DESTINATION_PHASE before anything connects to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http
import http.client
import http.cookiejar
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import requests
import urllib3.exceptions

from downloader import mime, outbound
from downloader.errors import DestinationNotAllowed, DownloadError, Interrupted
from downloader.outbound import Outbound
from downloader.version import __version__

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
#: Client errors that say "try again later" rather than "this will never work".
RETRIABLE_CLIENT_STATUSES = frozenset({408, 425, 429})
USER_AGENT = f"Downloader/{__version__} (+https://github.com/skroutz/downloader)"
#: Phase of a download refused by the outbound policy ("destination address not allowed").
DESTINATION_PHASE = "validating destination"


@dataclasses.dataclass(frozen=True)
class FetchLimits:
    connect_timeout: float
    total_timeout: float
    max_redirects: int
    max_bytes: int


@dataclasses.dataclass(frozen=True)
class Fetched:
    path: Path
    response_code: int
    mime_type: str
    size: int
    sha256: str = ""
    """Hex digest of the stored bytes, computed while streaming (callback key `sha256`)."""
    final_url: str = ""
    """The URL the body came from, after redirects."""


@dataclasses.dataclass(eq=False)
class Attempt:
    """A download in progress, as the watchdog sees it."""

    deadline: float
    cancelled: threading.Event
    max_bytes: int
    response: requests.Response | None = None
    waiting_on: socket.socket | None = None
    """The socket waiting for response headers, before there is a response to abort."""
    why: str = ""


class Fetcher:
    """Shared by all download threads of a process: one session (connection pool) per proxy."""

    def __init__(
        self,
        limits: FetchLimits,
        default_headers: Mapping[str, str],
        pool_size: int,
        *,
        outbound: Outbound | None = None,
    ) -> None:
        self.limits = limits
        # Without one, the strict default: only public addresses.
        self.outbound = outbound if outbound is not None else Outbound()
        self.default_headers = dict(default_headers)
        self.pool_size = pool_size
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()
        self._attempts: set[Attempt] = set()

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def session(self, proxy: str) -> requests.Session:
        with self._lock:
            session = self._sessions.get(proxy)
            if session is None:
                session = self._sessions[proxy] = self._new_session(proxy)
            return session

    def _new_session(self, proxy: str) -> requests.Session:
        session = requests.Session()
        session.headers.clear()  # no python-requests defaults: the server sees only ours
        # Cookies of one download must never leak into another one.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.outbound.mount(session, pool_connections=64, pool_maxsize=self.pool_size)
        if proxy:
            session.proxies = {"http": proxy, "https": proxy}
        return session

    def headers_for(self, job_headers: Mapping[str, str] | None) -> tuple[dict[str, str], bool]:
        """Defaults, then the job's per key (case-insensitive); and whether we decode the body.

        As the original (Go's transport): we ask for gzip and decompress it ourselves unless
        the caller chose Accept-Encoding, in which case the bytes are stored as sent.
        """
        merged: dict[str, str] = {}
        lower: dict[str, str] = {}
        for source in (self.default_headers, job_headers or {}):
            for name, value in source.items():
                old = lower.pop(name.lower(), None)
                if old is not None:
                    merged.pop(old)
                merged[name] = value
                lower[name.lower()] = name
        decode = "accept-encoding" not in lower
        if decode:
            merged["Accept-Encoding"] = "gzip, deflate"
        if "user-agent" not in lower:
            merged["User-Agent"] = USER_AGENT
        return merged, decode

    # --- the watchdog -----------------------------------------------------------

    def enforce_deadlines(self, now: float | None = None) -> None:
        """Abort the sockets of overdue or cancelled attempts (call every ~0.5 s)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            attempts = list(self._attempts)
        for attempt in attempts:
            if attempt.cancelled.is_set() or now >= attempt.deadline:
                attempt.why = attempt.why or ("cancelled" if attempt.cancelled.is_set() else "deadline")
                _abort(attempt)

    @contextlib.contextmanager
    def _tracked(self, attempt: Attempt) -> Iterator[Attempt]:
        with self._lock:
            self._attempts.add(attempt)
        try:
            yield attempt
        finally:
            with self._lock:
                self._attempts.discard(attempt)

    # --- one attempt ------------------------------------------------------------

    def fetch(
        self,
        *,
        job_id: str,
        url: str,
        proxy: str,
        job_headers: Mapping[str, str] | None,
        timeout: float,
        tmp_dir: Path,
        sniff: bool,
        mime_pattern: mime.MimePattern | None,
        cancelled: threading.Event,
        max_bytes: int = 0,
    ) -> Fetched:
        """One attempt. `timeout` (seconds) and `max_bytes` may lower the service's limits for
        this job, never raise them; 0 means the service's."""
        budget = min(timeout, self.limits.total_timeout) if timeout > 0 else self.limits.total_timeout
        cap = min(max_bytes, self.limits.max_bytes) if max_bytes > 0 else self.limits.max_bytes
        attempt = Attempt(deadline=time.monotonic() + budget, cancelled=cancelled, max_bytes=cap)
        waiting = outbound.watching_sockets(lambda sock: setattr(attempt, "waiting_on", sock))
        with self._tracked(attempt), waiting:
            response = self._request(url, proxy, job_headers, budget, attempt)
            try:
                attempt.response = response
                return self._receive(job_id, response, attempt, tmp_dir, sniff, mime_pattern)
            finally:
                response.close()

    def _request(
        self, url: str, proxy: str, job_headers: Mapping[str, str] | None, budget: float, attempt: Attempt
    ) -> requests.Response:
        headers, decode = self.headers_for(job_headers)
        try:
            response = self.outbound.send(
                self.session(proxy),
                "GET",
                url,
                headers=headers,
                stream=True,
                timeout=(min(self.limits.connect_timeout, budget), budget),
                max_redirects=self.limits.max_redirects,
            )
        except DestinationNotAllowed as exc:
            raise DownloadError(DESTINATION_PHASE, str(exc), retriable=False) from exc
        except (
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidHeader,
            ValueError,
        ) as exc:
            raise DownloadError("creating request", str(exc), retriable=False) from exc
        except requests.exceptions.SSLError as exc:
            raise DownloadError("performing request", f"TLS Error occured: {exc}", retriable=False) from exc
        except requests.exceptions.RequestException as exc:
            _raise_if_interrupted(attempt, exc)
            raise DownloadError("performing request", _describe(exc), retriable=True) from exc
        response.raw.decode_content = decode
        _check_status(response)
        return response

    def _receive(
        self,
        job_id: str,
        response: requests.Response,
        attempt: Attempt,
        tmp_dir: Path,
        sniff: bool,
        mime_pattern: mime.MimePattern | None,
    ) -> Fetched:
        code = response.status_code
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > attempt.max_bytes:
            raise _too_large(attempt.max_bytes, code)
        path = tmp_dir / f"{job_id}.tmp"
        try:
            out = path.open("wb")
        except OSError as exc:
            raise DownloadError(
                "creating tmp file", str(exc), retriable=True, internal=True, response_code=code
            ) from exc
        try:
            with out:
                size, detected, sha256 = self._copy(response, out, attempt, sniff, mime_pattern)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise DownloadError(
                        "syncing to disk", str(exc), retriable=True, internal=True, response_code=code
                    ) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return Fetched(path=path, response_code=code, mime_type=detected, size=size, sha256=sha256,
                       final_url=response.url)  # fmt: skip

    def _copy(
        self,
        response: requests.Response,
        out: IO[bytes],
        attempt: Attempt,
        sniff: bool,
        mime_pattern: mime.MimePattern | None,
    ) -> tuple[int, str, str]:
        code = response.status_code
        head = b""
        detected = ""
        size = 0
        digest = hashlib.sha256()
        sniffed = not sniff
        for chunk in self._chunks(response, attempt):
            size += len(chunk)
            digest.update(chunk)
            if size > attempt.max_bytes:
                raise _too_large(attempt.max_bytes, code)
            if not sniffed:
                head += chunk
                if len(head) >= mime.SNIFF_BYTES:
                    detected = _check_mime(head, mime_pattern, code)
                    sniffed = True
            _write(out, chunk, code)
        if not sniffed:
            detected = _check_mime(head, mime_pattern, code)
        return size, detected, digest.hexdigest()

    def _chunks(self, response: requests.Response, attempt: Attempt) -> Iterator[bytes]:
        code = response.status_code
        decode = bool(response.raw.decode_content)
        while True:
            if attempt.cancelled.is_set():
                raise Interrupted("download cancelled (shutting down, disk full or lease not renewed)")
            if time.monotonic() >= attempt.deadline:
                raise DownloadError(
                    "downloading file", "download timeout exceeded", retriable=True, response_code=code
                )
            try:
                # read1: whatever has arrived, so the deadline is looked at between small reads
                chunk = response.raw.read1(CHUNK_BYTES, decode_content=decode)
            except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                _raise_if_interrupted(attempt, exc, code)
                raise DownloadError(
                    "downloading file", _describe(exc), retriable=True, response_code=code
                ) from exc
            if not chunk:
                return
            yield chunk


def _check_status(response: requests.Response) -> None:
    code = response.status_code
    if 200 <= code < 300 and code not in (204, 205):
        return
    status = f"{code} {response.reason or _phrase(code)}"
    retriable = code >= 500 or code in RETRIABLE_CLIENT_STATUSES
    response.close()
    raise DownloadError(
        "processing response", f"Received status code {status}", retriable=retriable, response_code=code
    )


def _check_mime(head: bytes, pattern: mime.MimePattern | None, code: int) -> str:
    detected = mime.sniff(head[: mime.SNIFF_BYTES])
    if pattern is not None:
        problem = pattern.check(detected)
        if problem:
            raise DownloadError("validating mime type", problem, retriable=False, response_code=code)
    return detected


def _write(out: IO[bytes], chunk: bytes, code: int) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        # A full or broken disk is our problem, not the job's: retried without using an attempt.
        raise DownloadError(
            "writing tmp file", str(exc), retriable=True, internal=True, response_code=code
        ) from exc


def _too_large(limit: int, code: int) -> DownloadError:
    return DownloadError(
        "downloading file",
        f"413 Payload Too Large: the response exceeds the limit of {limit} bytes",
        retriable=False,
        response_code=code,
    )


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def _describe(exc: BaseException) -> str:
    """A readable text for a transport error; a body cut short reads as Go's `unexpected EOF`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.IncompleteRead | http.client.IncompleteRead):
            return f"unexpected EOF ({current})"
        for arg in getattr(current, "args", ()):
            if isinstance(arg, urllib3.exceptions.IncompleteRead | http.client.IncompleteRead):
                return f"unexpected EOF ({arg})"
        current = current.__cause__ or current.__context__
    text = str(exc)
    if "IncompleteRead" in text or "Response ended prematurely" in text:
        return f"unexpected EOF ({text})"
    return text or type(exc).__name__


def _raise_if_interrupted(attempt: Attempt, exc: BaseException, code: int = 0) -> None:
    if attempt.cancelled.is_set():
        raise Interrupted("download cancelled (shutting down, disk full or lease not renewed)") from exc
    if attempt.why == "deadline" or time.monotonic() >= attempt.deadline:
        raise DownloadError(
            "downloading file", "download timeout exceeded", retriable=True, response_code=code
        ) from exc


def _abort(attempt: Attempt) -> None:
    """Unblock a thread stuck in recv(): on the response's socket, or, while the headers
    are still arriving, on the socket that waits for them."""
    sock = attempt.waiting_on
    if attempt.response is not None:
        raw: Any = attempt.response.raw
        connection: Any = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
        sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
