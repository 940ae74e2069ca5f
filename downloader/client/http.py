"""`Client` and `AsyncClient`: the Downloader API over httpx, blocking or asyncio.

Both share the request building and answer reading below and differ only in their I/O. An
enqueue is sent again after a 503 (too few Redis replicas acknowledged the job: nothing was
queued), waiting its Retry-After; after a lost connection only with an idempotency key, whose
retry cannot queue the job twice.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from downloader.client.models import ApiError, ClientError, Enqueued, JobRequest, JobStatus, Unreachable

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: The longest Retry-After an enqueue waits before sending again, in seconds: a longer one
#: is the caller's to wait (the ApiError says 503).
MAX_RETRY_AFTER_SECONDS = 30.0


class _Protocol:
    """What to send and how to read the answer, shared by both clients (no I/O)."""

    def __init__(self, base_url: str, api_key: str | None, attempts: int) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.attempts = attempts

    @staticmethod
    def enqueue_parts(request: JobRequest, key: str | None) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers[IDEMPOTENCY_HEADER] = key
        return json.dumps(request.body()).encode("utf-8"), headers

    @staticmethod
    def job_path(kind: str, job_id: str) -> str:
        if not job_id:
            raise ValueError("job_id must not be empty")
        return f"/{kind}/{urllib.parse.quote(job_id, safe='')}"

    def wait_before_retry(self, attempt: int, key: str | None, answer: httpx.Response | None) -> float | None:
        """Seconds to wait before sending an enqueue again, None when it must not be."""
        if attempt >= self.attempts:
            return None
        if answer is None:  # no answer: safe to send again only under an idempotency key
            return 0.5 * attempt if key is not None else None
        if answer.status_code != 503:
            return None
        try:
            wait = float(answer.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        return wait if 0 <= wait <= MAX_RETRY_AFTER_SECONDS else None

    @staticmethod
    def enqueued(answer: httpx.Response) -> Enqueued:
        _raise_for(answer, 201)
        try:
            job_id = answer.json()["id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ClientError(f"POST /download answered 201 without an id: {answer.text!r}") from exc
        return Enqueued(str(job_id), replayed=answer.headers.get(REPLAYED_HEADER, "") == "true")

    @staticmethod
    def status(answer: httpx.Response) -> JobStatus | None:
        if answer.status_code == 404:
            return None
        _raise_for(answer, 200)
        try:
            return JobStatus.from_json(answer.json())
        except (ValueError, TypeError, AttributeError) as exc:
            raise ClientError(f"GET {answer.request.url.path} answered an unreadable job: {exc}") from exc

    @staticmethod
    def retried(answer: httpx.Response) -> None:
        _raise_for(answer, 204)


def _raise_for(answer: httpx.Response, expected: int) -> None:
    if answer.status_code != expected:
        raise ApiError(answer.status_code, answer.text, answer.request.method, answer.request.url.path)


def _keys_for(requests: Sequence[JobRequest], keys: Sequence[str | None] | None) -> Sequence[str | None]:
    if keys is None:
        return [None] * len(requests)
    if len(keys) != len(requests):
        raise ValueError(f"{len(keys)} idempotency keys for {len(requests)} requests")
    return keys


class Client:
    """The Downloader API, blocking. Thread-safe; use it as a context manager or `close()` it.

    `api_key`: sent as a bearer token (the service's DOWNLOADER_API_KEYS). `attempts`: how
    many times an enqueue is sent in all (see the module). `http`: an httpx.Client of yours
    (its base URL is then yours to set; it is not closed here).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        http: httpx.Client | None = None,
    ) -> None:
        self._protocol = _Protocol(base_url, api_key, attempts)
        self._owned = http is None
        self._http = http or httpx.Client(base_url=self._protocol.base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def enqueue(self, request: JobRequest, *, idempotency_key: str | None = None) -> Enqueued:
        """Queue one job. With `idempotency_key`, sending it again (this call's own retries, or
        yours after an error) answers the first job instead of queueing another."""
        body, headers = self._protocol.enqueue_parts(request, idempotency_key)
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._send("POST", "/download", content=body, headers=headers)
            except Unreachable:
                wait = self._protocol.wait_before_retry(attempt, idempotency_key, None)
                if wait is None:
                    raise
            else:
                wait = self._protocol.wait_before_retry(attempt, idempotency_key, answer)
                if wait is None:
                    return self._protocol.enqueued(answer)
            time.sleep(wait)

    def enqueue_many(
        self,
        requests: Iterable[JobRequest],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        concurrency: int = 8,
    ) -> list[Enqueued | ClientError]:
        """Queue each job, `concurrency` at a time; in the order given, each one's Enqueued or
        the ClientError that stopped it (one failure loses none of the others)."""
        batch = list(requests)
        keys = _keys_for(batch, idempotency_keys)

        def one(index: int) -> Enqueued | ClientError:
            try:
                return self.enqueue(batch[index], idempotency_key=keys[index])
            except ClientError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, range(len(batch))))

    def job(self, job_id: str) -> JobStatus | None:
        """The job's status; None when the service knows no such job (or deleted it)."""
        return self._protocol.status(self._send("GET", self._protocol.job_path("jobs", job_id)))

    def retry(self, job_id: str) -> None:
        """Put a Failed callback back in its queue (POST /retry/<id>); ApiError 400 when the
        job is unknown or its callback is not Failed."""
        self._protocol.retried(self._send("POST", self._protocol.job_path("retry", job_id)))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._protocol.headers, **kwargs.pop("headers", {})}
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{method} {path}: {exc!r}") from exc


class AsyncClient:
    """The Downloader API for asyncio: `Client`'s methods, awaited."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._protocol = _Protocol(base_url, api_key, attempts)
        self._owned = http is None
        self._http = http or httpx.AsyncClient(base_url=self._protocol.base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def enqueue(self, request: JobRequest, *, idempotency_key: str | None = None) -> Enqueued:
        body, headers = self._protocol.enqueue_parts(request, idempotency_key)
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._send("POST", "/download", content=body, headers=headers)
            except Unreachable:
                wait = self._protocol.wait_before_retry(attempt, idempotency_key, None)
                if wait is None:
                    raise
            else:
                wait = self._protocol.wait_before_retry(attempt, idempotency_key, answer)
                if wait is None:
                    return self._protocol.enqueued(answer)
            await asyncio.sleep(wait)

    async def enqueue_many(
        self,
        requests: Iterable[JobRequest],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        concurrency: int = 8,
    ) -> list[Enqueued | ClientError]:
        batch = list(requests)
        keys = _keys_for(batch, idempotency_keys)
        room = asyncio.Semaphore(max(1, concurrency))

        async def one(index: int) -> Enqueued | ClientError:
            async with room:
                try:
                    return await self.enqueue(batch[index], idempotency_key=keys[index])
                except ClientError as exc:
                    return exc

        return list(await asyncio.gather(*(one(i) for i in range(len(batch)))))

    async def job(self, job_id: str) -> JobStatus | None:
        return self._protocol.status(await self._send("GET", self._protocol.job_path("jobs", job_id)))

    async def retry(self, job_id: str) -> None:
        self._protocol.retried(await self._send("POST", self._protocol.job_path("retry", job_id)))

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._protocol.headers, **kwargs.pop("headers", {})}
        try:
            return await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{method} {path}: {exc!r}") from exc
