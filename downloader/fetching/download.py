"""One download attempt: GET the URL (urllib3, through `downloader.fetching.outbound`), stream it to
`<tmp>/<id>.tmp`, sniff and fsync.

Failures become `DownloadError`s classified as the original does (reference 3.3-3.4), with
its fixes: TLS errors are known by exception type, 3xx/204 answers are not stored as files,
and every attempt has a total deadline, a redirect cap and a size cap. A watchdog thread
(`Fetcher.enforce_deadlines`) aborts sockets of attempts that overrun or are cancelled.
Every request and redirect hop goes through `downloader.fetching.outbound`: a non-public destination
fails terminally in phase DESTINATION_PHASE before anything connects to it. One client
(connection pools) per distinct `aggr_proxy`, the MAX_CLIENTS most recently used only: one
pushed out is closed once the last download using it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.utils
import errno
import functools
import hashlib
import http
import http.client
import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

import urllib3
import urllib3.exceptions

from downloader.errors import (
    AttemptPhase,
    DestinationNotAllowed,
    DownloadError,
    FailureReason,
    Interrupted,
    status_reason,
)
from downloader.fetching import mime, outbound, resume
from downloader.fetching.outbound import Client, Outbound, Response
from downloader.version import __version__

log = logging.getLogger(__name__)

#: Bytes asked of the connection by a download's first read. read1 returns whatever has
#: arrived, so a slow transfer is never held back for a full chunk.
CHUNK_BYTES = 64 * 1024
#: Each read that comes back full (bytes are waiting: the transfer outruns us) doubles the
#: next one's ask, up to this: a fast transfer is read in large pieces, each costing one pass
#: of the per-chunk Python, while a slow one keeps small reads (read1 allocates its ask).
#: Larger pieces saved little more and cost the worker's RSS: 512 KiB grew a first 1 GiB
#: download's peak by 3-5 MB against 1-1.5 MB (bench/stream.py).
MAX_CHUNK_BYTES = 256 * 1024
#: A body that grows past this many bytes is hashed (SHA-256) on a helper thread beside the
#: transfer from then on: hashlib lets go of the GIL on large buffers, so the next read and
#: write run at the same time on another core. Smaller bodies, most files, start no thread.
HASH_BESIDE_BYTES = 8 * 1024 * 1024
#: Chunks handed to that thread and not hashed yet, at most: the memory it may lag behind by.
#: One is enough to hash a chunk while the next is read and written.
HASH_BACKLOG = 1
#: Client errors that say "try again later" rather than "this will never work".
RETRIABLE_CLIENT_STATUSES = frozenset({408, 425, 429})
#: Answers whose Retry-After pauses their host fleet-wide (429 Too Many Requests, 503
#: Service Unavailable): the ones that speak of the server's load, not of the request.
RETRY_AFTER_STATUSES = frozenset({429, 503})
USER_AGENT = f"Downloader/{__version__} (+https://github.com/skroutz/downloader)"
#: Phase of a download refused by the outbound policy ("destination address not allowed").
DESTINATION_PHASE = AttemptPhase.VALIDATING_DESTINATION
#: Clients kept for distinct proxies: each holds pools and idle connections (file
#: descriptors), and jobs may name any number of proxies.
MAX_CLIENTS = 32


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
    resumed_from: int = 0
    """Bytes kept from an earlier attempt (a range request continued them); 0 for none."""
    discarded: int = 0
    """Bytes of an earlier attempt that could not be continued (the file changed, or the server
    answered another range), so this attempt started again from byte 0."""


@dataclasses.dataclass(eq=False)
class Attempt:
    """A download in progress, as the watchdog sees it."""

    deadline: float
    cancelled: threading.Event
    max_bytes: int
    response: Response | None = None
    waiting_on: socket.socket | None = None
    """The socket waiting for response headers, before there is a response to abort."""
    why: str = ""

    def waiting(self, sock: socket.socket) -> None:
        self.waiting_on = sock


@dataclasses.dataclass(eq=False)
class _Shared:
    """A client of the cache and the downloads using it now."""

    client: Client
    users: int = 0
    evicted: bool = False


class Fetcher:
    """Shared by all download threads of a process: one client (connection pools) per proxy,
    for the `max_clients` proxies used last."""

    def __init__(
        self,
        limits: FetchLimits,
        default_headers: Mapping[str, str],
        pool_size: int,
        *,
        outbound: Outbound | None = None,
        max_clients: int = MAX_CLIENTS,
        resume: bool = False,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.limits = limits
        # Without one, the strict default: only public addresses.
        self.outbound = outbound if outbound is not None else Outbound()
        self.default_headers = dict(default_headers)
        self.pool_size = pool_size
        # Only the defaults' headers, what almost every job sends: built once.
        self._plain_headers = self._merge_headers(None)
        self.max_clients = max_clients
        #: Keep what a cut download stored and continue it with a range request next time.
        self.resume = resume
        self._clients: OrderedDict[str, _Shared] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._evicted_in_use: set[_Shared] = set()
        self._attempts: set[Attempt] = set()
        self._timeouts: dict[float, urllib3.Timeout] = {}

    def close(self) -> None:
        with self._lock:
            idle = self._evict(keep=0)
        for client in idle:
            client.close()

    def open_clients(self) -> int:
        """Clients not closed yet: those cached, and evicted ones still in use."""
        with self._lock:
            return len(self._clients) + len(self._evicted_in_use)

    @contextlib.contextmanager
    def _client(self, proxy: str) -> Iterator[Client]:
        """The proxy's client, never closed while the caller holds it."""
        idle: list[Client] = []
        with self._lock:
            shared = self._clients.get(proxy)
            if shared is None:
                # No cookies are kept: one download's must never reach another one.
                client = self.outbound.client(proxy=proxy, pool_connections=64, pool_maxsize=self.pool_size)
                shared = self._clients[proxy] = _Shared(client)
                idle = self._evict(keep=self.max_clients)
            else:
                self._clients.move_to_end(proxy)
            shared.users += 1
        for old in idle:  # outside the lock: closing a pool closes its sockets
            old.close()
        try:
            yield shared.client
        finally:
            with self._lock:
                shared.users -= 1
                last = shared.evicted and shared.users == 0
                if last:
                    self._evicted_in_use.discard(shared)
            if last:
                shared.client.close()

    def _evict(self, keep: int) -> list[Client]:
        """Drop the least recently used clients beyond `keep` (lock held); returns the idle
        ones to close now. One in use is closed by the download that releases it last:
        closed under it, a redirect hop would open new pools nobody closes."""
        idle = []
        while len(self._clients) > keep:
            _, oldest = self._clients.popitem(last=False)
            oldest.evicted = True
            if oldest.users:
                self._evicted_in_use.add(oldest)
            else:
                idle.append(oldest.client)
        return idle

    def headers_for(self, job_headers: Mapping[str, str] | None) -> tuple[dict[str, str], bool]:
        """Defaults, then the job's per key (case-insensitive); and whether we decode the body.

        As the original (Go's transport): we ask for gzip and decompress it ourselves unless
        the caller chose Accept-Encoding, in which case the bytes are stored as sent.
        """
        if not job_headers:
            headers, decode = self._plain_headers
            return dict(headers), decode
        return self._merge_headers(job_headers)

    def _merge_headers(self, job_headers: Mapping[str, str] | None) -> tuple[dict[str, str], bool]:
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
        sync: bool = True,
    ) -> Fetched:
        """One attempt. `timeout` (seconds) and `max_bytes` may lower the service's limits for
        this job, never raise them; 0 means the service's. `sync`: fsync the file once whole."""
        budget = min(timeout, self.limits.total_timeout) if timeout > 0 else self.limits.total_timeout
        cap = min(max_bytes, self.limits.max_bytes) if max_bytes > 0 else self.limits.max_bytes
        attempt = Attempt(deadline=time.monotonic() + budget, cancelled=cancelled, max_bytes=cap)
        with self._lock:
            self._attempts.add(attempt)
        outbound.watch_header_waits(attempt.waiting)
        # Without resume, a record an earlier configuration left may be there: forgotten blindly.
        partial, recorded = resume.lookup(tmp_dir, job_id, url) if self.resume else (None, True)
        discarded = 0
        try:
            # Held until the response is closed: its connection goes back to a live pool.
            with self._client(proxy) as client:
                request = functools.partial(self._request, client, url, job_headers, budget, attempt)
                response = request(partial)
                if partial is not None and not (
                    response.status == 206 and resume.continues(partial, response.headers)
                ):
                    response = _restart(request, url, response)
                    discarded, partial = partial.length, None
                try:
                    attempt.response = response
                    received = _Received(job_id, url, response, partial, discarded, recorded)
                    return self._receive(received, attempt, tmp_dir, sniff, mime_pattern, sync)
                finally:
                    outbound.close(response)
        finally:
            outbound.watch_header_waits(None)
            with self._lock:
                self._attempts.discard(attempt)

    def _timeout(self, budget: float) -> urllib3.Timeout:
        timeout = self._timeouts.get(budget)
        if timeout is None:
            if len(self._timeouts) > 64:
                self._timeouts.clear()  # jobs with timeouts of their own: keep a few only
            timeout = urllib3.Timeout(connect=min(self.limits.connect_timeout, budget), read=budget)
            self._timeouts[budget] = timeout
        return timeout

    def _request(
        self,
        client: Client,
        url: str,
        job_headers: Mapping[str, str] | None,
        budget: float,
        attempt: Attempt,
        partial: resume.Partial | None = None,
    ) -> Response:
        headers, decode = self.headers_for(job_headers)
        if partial is not None:
            headers.update(partial.range_headers())
        try:
            response = client.request(
                "GET",
                url,
                headers=headers,
                timeout=self._timeout(budget),
                max_redirects=self.limits.max_redirects,
            )
        # outbound.InvalidRequest is a ValueError too: URL, scheme, header, proxy URL
        except (DestinationNotAllowed, ValueError, outbound.TLSError) as exc:
            raise request_failure(exc) from exc
        except outbound.RequestError as exc:
            _raise_if_interrupted(attempt, exc)
            raise request_failure(exc) from exc
        response.decode_content = decode
        _check_status(response, ranged=partial is not None)
        return response

    def _receive(
        self,
        received: _Received,
        attempt: Attempt,
        tmp_dir: Path,
        sniff: bool,
        mime_pattern: mime.MimePattern | None,
        sync: bool = True,
    ) -> Fetched:
        response, partial = received.response, received.partial
        code = response.status
        offset = partial.length if partial is not None else 0
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and offset + int(declared) > attempt.max_bytes:
            raise _too_large(attempt.max_bytes, code)
        path = resume.tmp_path(tmp_dir, received.job_id)
        try:
            # Unbuffered: the chunks are large already, and a buffered file would cost two more
            # system calls at open (isatty, tell), each a hand-off of the GIL between downloads.
            out = path.open("ab" if partial is not None else "wb", buffering=0)
        except OSError as exc:
            raise _storage_error(AttemptPhase.CREATING_TMP_FILE, exc, code) from exc
        keep = self._note_resumable(received, tmp_dir)
        try:
            with out:
                prefix = path if partial is not None else None
                size, detected, sha256 = self._copy(response, out, attempt, sniff, mime_pattern, prefix)
                try:
                    out.flush()
                    if sync:
                        os.fsync(out.fileno())
                except OSError as exc:
                    raise _storage_error(AttemptPhase.SYNCING_TO_DISK, exc, code) from exc
            _check_whole(size, resume.whole_size(code, response.headers), code)
        except BaseException as exc:
            if not (keep and _continuable(exc)):
                resume.forget(tmp_dir, received.job_id)
            raise
        if keep or received.recorded:
            resume.forget(tmp_dir, received.job_id, keep_bytes=True)
        return Fetched(
            path=path,
            response_code=code,
            mime_type=detected,
            size=size,
            sha256=sha256,
            final_url=response.url or "",
            resumed_from=offset,
            discarded=received.discarded,
        )

    def _note_resumable(self, received: _Received, tmp_dir: Path) -> bool:
        """Record, before the body starts, how these bytes can be continued, so that even a
        killed process leaves what the next attempt needs; whether they can be."""
        headers = received.response.headers
        if not (self.resume and resume.resumable(headers)):
            if received.recorded:
                resume.forget(tmp_dir, received.job_id, keep_bytes=True)
            return False
        if received.partial is None:
            total = resume.whole_size(received.response.status, headers)
            record = resume.Partial(received.url, resume.validator(headers), total)
            try:
                resume.remember(tmp_dir, received.job_id, record)
            except OSError:
                return False  # not resumable then, but the download itself goes on
        return True

    def _copy(
        self,
        response: Response,
        out: IO[bytes],
        attempt: Attempt,
        sniff: bool,
        mime_pattern: mime.MimePattern | None,
        prefix: Path | None = None,
    ) -> tuple[int, str, str]:
        """Stream the body to `out`; size, mime type and sha256 cover `prefix` (the bytes an
        earlier attempt stored) too, so a resumed file is checked and hashed whole."""
        code = response.status
        with _Digest() as digest:
            size, head = _read_prefix(prefix, digest, code) if prefix is not None else (0, b"")
            detected = ""
            sniffed = not sniff
            if not sniffed and len(head) >= mime.SNIFF_BYTES:
                detected = _check_mime(head, mime_pattern, code)
                sniffed = True
            for chunk in self._chunks(response, attempt):
                size += len(chunk)
                if size > attempt.max_bytes:
                    raise _too_large(attempt.max_bytes, code)
                if not sniffed:
                    head += chunk[: mime.SNIFF_BYTES - len(head)]  # not a whole chunk held to the end
                    if len(head) >= mime.SNIFF_BYTES:
                        detected = _check_mime(head, mime_pattern, code)
                        sniffed = True
                _write(out, chunk, code)
                digest.update(chunk)  # last: hashing the previous chunk overlapped this read and write
            if not sniffed:
                detected = _check_mime(head, mime_pattern, code)
            return size, detected, digest.hexdigest()

    def _chunks(self, response: Response, attempt: Attempt) -> Iterator[bytes]:
        code = response.status
        # Bytes sent as they are have no decoder to go through: read raw, the same bytes without
        # urllib3's decoded-data buffer, which copies every chunk shorter than asked for.
        decode = bool(response.decode_content) and not resume.unencoded(response.headers)
        read1 = response.read1
        cancelled = attempt.cancelled
        deadline = attempt.deadline
        ask = CHUNK_BYTES
        while True:
            if cancelled.is_set():
                raise Interrupted("download cancelled (shutting down, disk full or lease not renewed)")
            if time.monotonic() >= deadline:
                raise _deadline_exceeded(code)
            try:
                # read1: whatever has arrived, so the deadline is looked at between reads
                chunk = read1(ask, decode_content=decode)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                _raise_if_interrupted(attempt, exc, code)
                raise transport_error(AttemptPhase.DOWNLOADING_FILE, exc, code) from exc
            if not chunk:
                return
            if len(chunk) == ask and ask < MAX_CHUNK_BYTES:
                ask *= 2
            yield chunk


def request_failure(exc: Exception) -> DownloadError:
    """A request that could not be made or answered, as the original classified it: a refused
    destination, an unusable request (terminal), a TLS failure (terminal), or a transport one."""
    if isinstance(exc, DestinationNotAllowed):
        return DownloadError(
            DESTINATION_PHASE, str(exc), reason=FailureReason.DESTINATION_NOT_ALLOWED, retriable=False
        )
    if isinstance(exc, ValueError):
        return DownloadError(
            AttemptPhase.CREATING_REQUEST, str(exc), reason=FailureReason.OTHER, retriable=False
        )
    if isinstance(exc, outbound.TLSError):
        return DownloadError(
            AttemptPhase.PERFORMING_REQUEST,
            f"TLS Error occured: {exc}",
            reason=FailureReason.TLS,
            retriable=False,
        )
    return transport_error(AttemptPhase.PERFORMING_REQUEST, exc)


def _restart(request: Callable[[resume.Partial | None], Response], url: str, response: Response) -> Response:
    """The file changed or the server answered another range: start again from byte 0. A 200
    is already the whole file; a mismatched 206 is asked again, without Range."""
    log.info("%s: the partial download cannot be continued (%s); starting again", url, response.status)
    if response.status != 206:
        return response
    outbound.close(response)
    return request(None)


@dataclasses.dataclass(frozen=True)
class _Received:
    """A response whose body is about to be stored, and the partial file it continues."""

    job_id: str
    url: str
    response: Response
    partial: resume.Partial | None
    discarded: int = 0
    recorded: bool = True
    """Whether a resume record of an earlier attempt may be on disk; most jobs have none, and
    then there is nothing to forget unless this attempt writes one."""


def _check_status(response: Response, *, ranged: bool = False) -> None:
    """Only a 2xx with a body is a file; a 206 only when we asked for a range (a server that
    sends part of a file to a plain GET did not send the file)."""
    code = response.status
    if 200 <= code < 300 and code not in (204, 205) and (code != 206 or ranged):
        return
    status = f"{code} {response.reason or _phrase(code)}"
    retriable = code >= 500 or code in RETRIABLE_CLIENT_STATUSES
    wait = retry_after(response.headers.get("Retry-After", "")) if code in RETRY_AFTER_STATUSES else None
    outbound.close(response)
    raise DownloadError(
        AttemptPhase.PROCESSING_RESPONSE,
        f"Received status code {status}",
        reason=status_reason(code),
        retriable=retriable,
        response_code=code,
        retry_after=wait,
    )


def retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP-date (RFC 9110 10.2.3);
    None when absent or unreadable, 0.0 for a date already past."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a date without zone is read as such
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _check_mime(head: bytes, pattern: mime.MimePattern | None, code: int) -> str:
    detected = mime.sniff(head[: mime.SNIFF_BYTES])
    if pattern is not None:
        problem = pattern.check(detected)
        if problem:
            raise DownloadError(
                AttemptPhase.VALIDATING_MIME_TYPE,
                problem,
                reason=FailureReason.MIME,
                retriable=False,
                response_code=code,
            )
    return detected


class _Digest:
    """The SHA-256 of a body, in order, as it streams. The first HASH_BESIDE_BYTES are hashed
    inline; from there a helper thread hashes while the caller reads and writes the next chunk,
    at most HASH_BACKLOG chunks behind. Use as a context manager: leaving it stops the thread."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._inline_left = HASH_BESIDE_BYTES
        self._todo: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        # One True per chunk hashed; a False when the thread died (the digest is then lost).
        self._done: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._broken = False

    def __enter__(self) -> _Digest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def update(self, chunk: bytes) -> None:
        if self._thread is None:
            self._sha256.update(chunk)
            self._inline_left -= len(chunk)
            if self._inline_left <= 0:
                self._thread = threading.Thread(target=self._hash_handed, name="sha256", daemon=True)
                self._thread.start()
            return
        if self._pending >= HASH_BACKLOG:
            # wait for the oldest chunk: the thread lags by HASH_BACKLOG chunks at most
            if not self._done.get():
                raise RuntimeError("hashing the body failed")
            self._pending -= 1
        self._todo.put(chunk)
        self._pending += 1

    def hexdigest(self) -> str:
        self._stop()
        if self._broken:
            raise RuntimeError("hashing the body failed")
        return self._sha256.hexdigest()

    def _hash_handed(self) -> None:
        try:
            while (chunk := self._todo.get()) is not None:
                self._sha256.update(chunk)
                del chunk  # not held while waiting for the next one: memory stays at the backlog
                self._done.put(True)
        except BaseException:
            self._broken = True
            self._done.put(False)  # whoever waits for room must not wait forever
            raise

    def _stop(self) -> None:
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join()
            self._thread = None
            self._pending = 0


def _read_prefix(path: Path, digest: _Digest, code: int) -> tuple[int, bytes]:
    """Hash the bytes an earlier attempt stored; their size and first bytes (for sniffing)."""
    size = 0
    head = b""
    try:
        with path.open("rb") as stored:
            while chunk := stored.read(1024 * 1024):
                if size < mime.SNIFF_BYTES:
                    head += chunk[: mime.SNIFF_BYTES - size]
                size += len(chunk)
                digest.update(chunk)
    except OSError as exc:
        raise _storage_error(AttemptPhase.WRITING_TMP_FILE, exc, code) from exc
    return size, head


def _check_whole(size: int, whole: int, code: int) -> None:
    """A file shorter or longer than the size its response declared is not the file."""
    if whole and size != whole:
        raise DownloadError(
            AttemptPhase.DOWNLOADING_FILE,
            f"unexpected EOF (stored {size} of {whole} bytes)",
            reason=FailureReason.NETWORK,
            retriable=True,
            response_code=code,
        )


def _continuable(exc: BaseException) -> bool:
    """Whether what an attempt stored before `exc` is worth continuing: the transfer was cut
    (network, timeout, shutdown), not refused for what it carried."""
    if isinstance(exc, Interrupted | KeyboardInterrupt | SystemExit):
        return True
    if isinstance(exc, DownloadError):
        return exc.retriable and exc.reason in (FailureReason.NETWORK, FailureReason.TIMEOUT)
    return False


def _write(out: IO[bytes], chunk: bytes, code: int) -> None:
    try:
        view = memoryview(chunk)
        while view:  # an unbuffered file may take part of a chunk (a disk filling up)
            written = out.write(view)
            if not written:
                raise OSError(errno.ENOSPC, "the file took no byte of the chunk")
            view = view[written:]
    except OSError as exc:
        # A full or broken disk is our problem, not the job's: retried without using an attempt.
        raise _storage_error(AttemptPhase.WRITING_TMP_FILE, exc, code) from exc


def _too_large(limit: int, code: int) -> DownloadError:
    return DownloadError(
        AttemptPhase.DOWNLOADING_FILE,
        f"413 Payload Too Large: the response exceeds the limit of {limit} bytes",
        reason=FailureReason.TOO_LARGE,
        retriable=False,
        response_code=code,
    )


def _storage_error(phase: AttemptPhase, exc: OSError, code: int) -> DownloadError:
    """Our tmp disk failed: not the job's fault, retried without using an attempt."""
    return DownloadError(
        phase, str(exc), reason=FailureReason.STORAGE, retriable=True, internal=True, response_code=code
    )


def _deadline_exceeded(code: int) -> DownloadError:
    return DownloadError(
        AttemptPhase.DOWNLOADING_FILE,
        "download timeout exceeded",
        reason=FailureReason.TIMEOUT,
        retriable=True,
        response_code=code,
    )


def transport_error(phase: AttemptPhase, exc: BaseException, code: int = 0) -> DownloadError:
    """A transport failure (retried): a timeout or a network error, told apart by the types in
    the exception's chain, never by its text; the message is `_describe`'s."""
    reason = FailureReason.TIMEOUT if _timed_out(exc) else FailureReason.NETWORK
    return DownloadError(phase, _describe(exc), reason=reason, retriable=True, response_code=code)


#: The exception types that say "timed out": the stdlib's (socket.timeout is TimeoutError),
#: urllib3's (but NewConnectionError, a ConnectTimeoutError only by history: a refusal) and
#: the outbound layer's.
_TIMEOUTS = (TimeoutError, urllib3.exceptions.TimeoutError, outbound.RequestTimeout)


def _timed_out(exc: BaseException) -> bool:
    """Whether `exc`, or an error it wraps (cause, context, urllib3's MaxRetryError reason,
    an argument), is a timeout by type."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _TIMEOUTS) and not isinstance(current, urllib3.exceptions.NewConnectionError):
            return True
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(e for e in inner if isinstance(e, BaseException))
    return False


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
        raise _deadline_exceeded(code) from exc


def _abort(attempt: Attempt) -> None:
    outbound.shut_down(attempt.response, attempt.waiting_on)
