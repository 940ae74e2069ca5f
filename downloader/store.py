"""The Redis layer: every read and write of jobs, queues, leases and stats goes through here.

`Store` (blocking, thread-safe) serves workers and notifiers; `AsyncStore` serves the API.
State changes run as the Lua scripts of `scripts`, with key names from `keys`. Redis
errors leave this module as `StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio

from downloader import keys, redis_client, scripts
from downloader.errors import JobNotFound, StoreError
from downloader.models import DEFAULT_AGGREGATION_LIMIT, DEFAULT_MAX_RETRIES, Aggregation, Job

if TYPE_CHECKING:
    from downloader.settings import Settings

log = logging.getLogger("downloader.store")

ID_ATTEMPTS = 3
#: Backoff of the wakeup listener between failed subscriptions (seconds).
RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX = 0.5, 10.0


def new_job_id() -> str:
    """14 url-safe characters from 10 random bytes of a cryptographic source."""
    return secrets.token_urlsafe(10)


def new_token() -> str:
    """A lease holder's identity; fences writes of a process whose lease was taken back."""
    return secrets.token_hex(8)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A hash from a script's flat HGETALL reply."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _flatten(mapping: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in mapping.items():
        out += [k, v]
    return out


@dataclasses.dataclass(frozen=True)
class Claim:
    """What one claim attempt on an aggregation gave: ids, or why none."""

    ids: list[str]
    full: bool = False
    paused: bool = False
    next_ready: float | None = None
    empty: bool = False


@dataclasses.dataclass(frozen=True)
class ClaimedJob:
    """A job as a claim reads it: the original's hash, and our encoded `JobOptions`."""

    raw: dict[str, str]
    options: str = ""
    result: str = ""
    """Encoded `DownloadResult` (read by the notifier only)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The end of one download attempt, to be written atomically by `Store.finish`."""

    fields: dict[str, str]
    target: str | None = None
    score: float = 0.0
    error: str = ""
    finished: bool = False
    deletion_target: str = ""
    """Encoded storage Location, recorded when the target is the deletion queue."""
    result: str = ""
    """Encoded DownloadResult of a successful download."""


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Everything GET /jobs/<id> shows."""

    job: Job
    meta: dict[str, str]
    errors: list[str]
    queued_at: float | None
    lease_expires_at: float | None


def connect(url: str) -> redis.Redis:
    """A client straight to `url`; processes use `Store.from_settings` (Sentinel aware)."""
    return redis_client.connect_url(url)


class Store:
    """Blocking access for workers and notifiers (one instance shared by all threads)."""

    def __init__(self, client: redis.Redis, *, meta_ttl: int = keys.JOB_META_TTL_SECONDS) -> None:
        self.redis = client
        self.meta_ttl = meta_ttl
        register = client.register_script
        self._claim = register(scripts.CLAIM)
        self._renew = register(scripts.RENEW)
        self._finish = register(scripts.FINISH)
        self._recover = register(scripts.RECOVER)
        self._claim_callbacks = register(scripts.CLAIM_CALLBACKS)
        self._delivered = register(scripts.CALLBACK_DELIVERED)
        self._undelivered = register(scripts.CALLBACK_UNDELIVERED)
        self._recover_callback = register(scripts.RECOVER_CALLBACK)
        self._claim_deletions = register(scripts.CLAIM_DELETIONS)
        self._delete_idle = register(scripts.DELETE_IDLE_AGGREGATION)
        self._enqueue = register(scripts.ENQUEUE)
        self._start_callback = register(scripts.START_CALLBACK)
        self._start_downloads = register(scripts.START_DOWNLOADS)
        self._rescue = register(scripts.RESCUE_ORPHAN)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(connect(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store every process uses: the URL, or the primary that Sentinel names."""
        return cls(redis_client.connect(settings))

    def close(self) -> None:
        self.redis.close()

    def ping(self) -> None:
        with translated():
            self.redis.ping()

    # --- discovery --------------------------------------------------------------

    def active_aggregations(self) -> set[str]:
        """Aggregations with queued jobs: those whose `jobs:<id>` set exists."""
        with translated():
            return {
                keys.aggregation_from_queue(k)
                for k in self.redis.scan_iter(match=keys.QUEUE_PATTERN, count=1000)
            }

    def aggregations_in_flight(self) -> set[str]:
        with translated():
            return {
                keys.aggregation_from_inflight(k)
                for k in self.redis.scan_iter(match=keys.INFLIGHT_PATTERN, count=1000)
            }

    def listen_wakeups(self, stop: threading.Event, on_wakeup: Callable[[str], None]) -> None:
        """Call `on_wakeup(aggr_id)` for every announcement until `stop`, resubscribing after
        Redis outages with backoff (what is missed meanwhile the periodic scan finds)."""
        delay = 0.0
        while not stop.is_set():
            if self._listen_once(stop, on_wakeup):
                delay = 0.0  # it was subscribed: a new outage starts with a short wait
            delay = min(RESUBSCRIBE_MAX, max(RESUBSCRIBE_FIRST, delay * 2))
            stop.wait(delay)

    def _listen_once(self, stop: threading.Event, on_wakeup: Callable[[str], None]) -> bool:
        """One subscription until `stop` or a Redis error; True if it got subscribed."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        subscribed = False
        try:
            pubsub.subscribe(keys.WAKEUP_CHANNEL)
            subscribed = True
            log.debug("subscribed to %s", keys.WAKEUP_CHANNEL)
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    on_wakeup(str(message["data"]))
        except redis.RedisError as exc:
            if subscribed:  # one line per outage, not one per retry
                log.warning("wakeup subscription lost, resubscribing: %s: %s", type(exc).__name__, exc)
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()
        return subscribed

    def aggregation(self, aggr_id: str) -> Aggregation:
        with translated():
            raw = cast(dict[str, str], self.redis.hgetall(keys.aggregation(aggr_id)))
        return Aggregation.from_hash(aggr_id, raw)

    def delete_idle_aggregation(self, aggr_id: str) -> bool:
        with translated():
            return bool(
                self._delete_idle(
                    keys=[
                        keys.queue(aggr_id),
                        keys.inflight(aggr_id),
                        keys.aggregation(aggr_id),
                        keys.MANAGED_AGGREGATIONS,
                    ],
                    args=[aggr_id],
                )
            )

    # --- what the operator reads and writes ---------------------------------------

    def backlog(self, aggr_id: str) -> tuple[int, int]:
        """(queued jobs, jobs in flight) of one aggregation."""
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(keys.queue(aggr_id))
            pipe.zcard(keys.inflight(aggr_id))
            queued, in_flight = pipe.execute()
        return int(queued), int(in_flight)

    def apply_aggregation(self, fields: Mapping[str, str], *, paused: bool) -> None:
        """Write `aggr:<id>` from an Aggregation's spec; mark it managed, paused or not."""
        aggr_id = fields["ID"]
        with translated():
            pipe = self.redis.pipeline(transaction=True)
            mapping: dict[Any, Any] = dict(fields)
            pipe.hset(keys.aggregation(aggr_id), mapping=mapping)
            pipe.hsetnx(keys.aggregation(aggr_id), "ExpiresAt", "")
            pipe.sadd(keys.MANAGED_AGGREGATIONS, aggr_id)
            if paused:
                pipe.sadd(keys.PAUSED_AGGREGATIONS, aggr_id)
            else:
                pipe.srem(keys.PAUSED_AGGREGATIONS, aggr_id)
            pipe.execute()

    def retire_aggregation(self, aggr_id: str) -> None:
        """Its Aggregation is being deleted: its queued jobs stay, paused, unmanaged."""
        with translated():
            pipe = self.redis.pipeline(transaction=True)
            pipe.sadd(keys.PAUSED_AGGREGATIONS, aggr_id)
            pipe.srem(keys.MANAGED_AGGREGATIONS, aggr_id)
            pipe.execute()

    def is_paused(self, aggr_id: str) -> bool:
        with translated():
            return bool(self.redis.sismember(keys.PAUSED_AGGREGATIONS, aggr_id))

    # --- enqueueing (also used by tests and `up`; the API has its async twin) ----

    def enqueue(self, job: Job, aggregation: Aggregation, now: float | None = None) -> str:
        now = time.time() if now is None else now
        with translated():
            for _ in range(ID_ATTEMPTS):
                job_id = new_job_id()
                k, a = enqueue_arguments(job, aggregation, job_id, now, self.meta_ttl)
                if self._enqueue(keys=k, args=a):
                    return job_id
        raise StoreError(f"Could not find unique ID after {ID_ATTEMPTS} tries for {job.job_string()}")

    # --- download leases --------------------------------------------------------

    def claim(
        self, aggr_id: str, wanted: int, token: str, lease_seconds: float, now: float | None = None
    ) -> Claim:
        now = time.time() if now is None else now
        with translated():
            reply = cast(
                list[str],
                self._claim(
                    keys=[
                        keys.queue(aggr_id),
                        keys.inflight(aggr_id),
                        keys.leases(aggr_id),
                        keys.aggregation(aggr_id),
                        keys.PAUSED_AGGREGATIONS,
                    ],
                    args=[
                        repr(now),
                        repr(now + lease_seconds),
                        wanted,
                        token,
                        DEFAULT_AGGREGATION_LIMIT,
                        aggr_id,
                    ],
                ),
            )
        status = reply[0]
        if status == "ok":
            return Claim(ids=list(reply[1:]))
        if status == "full":
            return Claim(ids=[], full=True)
        if status == "paused":
            return Claim(ids=[], paused=True)
        if status == "empty":
            return Claim(ids=[], empty=True)
        return Claim(ids=[], next_ready=float(status))

    def load_claimed(
        self,
        aggr_id: str,
        ids: Sequence[str],
        now: float | None = None,
    ) -> tuple[Aggregation, dict[str, ClaimedJob]]:
        """Mark claimed jobs InProgress and read them with their aggregation, in one round trip."""
        now = time.time() if now is None else now
        job_keys: list[str] = []
        for job_id in ids:
            job_keys += [keys.job(job_id), keys.job_meta(job_id), keys.job_options(job_id)]
        with translated():
            reply = cast(list[list[str]], self._start_downloads(
                keys=[keys.aggregation(aggr_id), *job_keys], args=[repr(now), self.meta_ttl]
            ))  # fmt: skip
        raw_aggregation, *per_job = reply
        raw_jobs = [
            ClaimedJob(_pairs(flat), options[0])
            for flat, options in zip(per_job[::2], per_job[1::2], strict=True)
        ]
        return Aggregation.from_hash(aggr_id, _pairs(raw_aggregation)), dict(zip(ids, raw_jobs, strict=True))

    def renew(
        self, aggr_id: str, ids: Sequence[str], token: str, lease_seconds: float, now: float | None = None
    ) -> list[str]:
        """Extend our leases; returns the ids whose lease we no longer hold."""
        if not ids:
            return []
        now = time.time() if now is None else now
        with translated():
            return cast(
                list[str],
                self._renew(
                    keys=[keys.inflight(aggr_id), keys.leases(aggr_id)],
                    args=[repr(now + lease_seconds), token, *ids],
                ),
            )

    def finish(self, job: Job, token: str, outcome: Outcome, now: float | None = None) -> int:
        now = time.time() if now is None else now
        target = outcome.target or keys.queue(job.aggr_id)
        with translated():
            return int(
                self._finish(
                    keys=[
                        keys.inflight(job.aggr_id),
                        keys.leases(job.aggr_id),
                        keys.job(job.id),
                        target,
                        keys.job_meta(job.id),
                        keys.job_errors(job.id),
                        keys.DELETION_TARGETS,
                    ],
                    args=[
                        job.id,
                        token,
                        repr(outcome.score) if outcome.target else "",
                        repr(now),
                        outcome.error,
                        keys.JOB_ERRORS_KEPT,
                        self.meta_ttl,
                        "1" if outcome.finished else "0",
                        outcome.deletion_target,
                        outcome.result,
                        *_flatten(outcome.fields),
                    ],
                )
            )

    def drop_claim(self, aggr_id: str, job_id: str, token: str) -> None:
        """Forget a claimed id whose job hash is gone or unreadable (nothing to run)."""
        with translated():
            self._finish(
                keys=[
                    keys.inflight(aggr_id),
                    keys.leases(aggr_id),
                    keys.job(job_id),
                    keys.queue(aggr_id),
                    keys.job_meta(job_id),
                    keys.job_errors(job_id),
                ],
                args=[job_id, token, "", "0", "", 1, 1, "0"],
            )

    def expired_leases(self, aggr_id: str, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with translated():
            return cast(
                list[str],
                self.redis.zrangebyscore(keys.inflight(aggr_id), "-inf", repr(now), start=0, num=500),
            )

    def recover(
        self, aggr_id: str, job_id: str, *, crash_tolerance: int, error: str, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        with translated():
            return int(
                self._recover(
                    keys=[
                        keys.inflight(aggr_id),
                        keys.leases(aggr_id),
                        keys.queue(aggr_id),
                        keys.job(job_id),
                        keys.job_meta(job_id),
                        keys.CALLBACK_QUEUE,
                        keys.job_errors(job_id),
                    ],
                    args=[
                        job_id,
                        repr(now),
                        crash_tolerance,
                        DEFAULT_MAX_RETRIES,
                        error,
                        self.meta_ttl,
                        keys.JOB_ERRORS_KEPT,
                    ],
                )
            )

    # --- callbacks --------------------------------------------------------------

    def claim_callbacks(
        self, wanted: int, token: str, lease_seconds: float, now: float | None = None
    ) -> list[str]:
        now = time.time() if now is None else now
        with translated():
            return cast(
                list[str],
                self._claim_callbacks(
                    keys=[keys.CALLBACK_QUEUE, keys.CALLBACK_INFLIGHT, keys.CALLBACK_LEASES],
                    args=[repr(now), repr(now + lease_seconds), wanted, token],
                ),
            )

    def start_callback(self, job_id: str) -> ClaimedJob:
        """Count the attempt and mark it InProgress; returns the job after that."""
        with translated():
            reply = cast(
                list[list[str]] | None,
                self._start_callback(
                    keys=[keys.job(job_id), keys.job_options(job_id), keys.job_meta(job_id)]
                ),
            )
        if not reply:
            raise JobNotFound(job_id)
        return ClaimedJob(_pairs(reply[0]), reply[1][0], reply[2][0])

    def renew_callbacks(self, ids: Sequence[str], token: str, lease_seconds: float) -> list[str]:
        """Extend the leases of callbacks being delivered; returns those no longer ours."""
        if not ids:
            return []
        with translated():
            return cast(list[str], self._renew(
                keys=[keys.CALLBACK_INFLIGHT, keys.CALLBACK_LEASES],
                args=[repr(time.time() + lease_seconds), token, *ids],
            ))  # fmt: skip

    def rescue_orphans(self, batch: int = 1000) -> dict[str, int]:
        """Queue again the jobs no queue knows of (left by the original's crashes).

        One SCAN over `job:*`; each candidate is re-checked atomically by a script, so a job
        that another process holds is never touched.
        """
        found = {"download": 0, "callback": 0}
        now = repr(time.time())
        with translated():
            for job_key in self.redis.scan_iter(match=keys.JOB_PATTERN, count=batch):
                job_id = job_key[len(keys.JOB_PREFIX) :]
                aggr = cast(str | None, self.redis.hget(job_key, "AggrID"))
                if not aggr:
                    continue
                kind = self._rescue(
                    keys=[job_key, keys.queue(aggr), keys.inflight(aggr), keys.CALLBACK_QUEUE,
                          keys.CALLBACK_INFLIGHT],
                    args=[job_id, now],
                )  # fmt: skip
                if kind:
                    found[str(kind)] += 1
        return found

    def callback_delivered(self, job_id: str, token: str, delete_at: float, location: str) -> int:
        """`location`: the encoded storage Location the reaper deletes at `delete_at`."""
        with translated():
            return int(
                self._delivered(
                    keys=[
                        keys.CALLBACK_INFLIGHT,
                        keys.CALLBACK_LEASES,
                        keys.job(job_id),
                        keys.job_meta(job_id),
                        keys.job_errors(job_id),
                        keys.DELETION_QUEUE,
                        keys.job_options(job_id),
                        keys.DELETION_TARGETS,
                    ],
                    args=[job_id, token, repr(delete_at), location],
                )
            )

    def callback_undelivered(
        self,
        job_id: str,
        token: str,
        fields: Mapping[str, str],
        retry_at: float | None,
        now: float | None = None,
    ) -> int:
        now = time.time() if now is None else now
        with translated():
            return int(
                self._undelivered(
                    keys=[
                        keys.CALLBACK_INFLIGHT,
                        keys.CALLBACK_LEASES,
                        keys.job(job_id),
                        keys.CALLBACK_QUEUE,
                        keys.job_meta(job_id),
                    ],
                    args=[
                        job_id,
                        token,
                        "" if retry_at is None else repr(retry_at),
                        repr(now),
                        self.meta_ttl,
                        *_flatten(fields),
                    ],
                )
            )

    def drop_callback_claim(self, job_id: str, token: str) -> None:
        with translated():
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(keys.CALLBACK_INFLIGHT, job_id)
            pipe.hdel(keys.CALLBACK_LEASES, job_id)
            pipe.execute()

    def recover_callbacks(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with translated():
            expired = cast(
                list[str],
                self.redis.zrangebyscore(keys.CALLBACK_INFLIGHT, "-inf", repr(now), start=0, num=500),
            )
            recovered = 0
            for job_id in expired:
                recovered += (
                    int(
                        self._recover_callback(
                            keys=[
                                keys.CALLBACK_INFLIGHT,
                                keys.CALLBACK_LEASES,
                                keys.job(job_id),
                                keys.CALLBACK_QUEUE,
                            ],
                            args=[job_id, repr(now)],
                        )
                    )
                    > 0
                )
        return recovered

    # --- file deletion ----------------------------------------------------------

    def claim_deletions(self, wanted: int, retry_after: float, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with translated():
            return cast(
                list[str],
                self._claim_deletions(
                    keys=[keys.DELETION_QUEUE], args=[repr(now), wanted, repr(now + retry_after)]
                ),
            )

    def deletion_targets(self, ids: Sequence[str]) -> dict[str, str]:
        """The encoded file Location of each id that has one recorded."""
        if not ids:
            return {}
        with translated():
            found = cast(list[str | None], self.redis.hmget(keys.DELETION_TARGETS, list(ids)))
        return {job_id: target for job_id, target in zip(ids, found, strict=True) if target}

    def deletion_done(self, job_id: str) -> None:
        with translated():
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(keys.DELETION_QUEUE, job_id)
            pipe.hdel(keys.DELETION_TARGETS, job_id)
            pipe.delete(
                keys.job(job_id), keys.job_meta(job_id), keys.job_errors(job_id), keys.job_options(job_id)
            )
            pipe.execute()

    # --- stats and reads ----------------------------------------------------------

    def write_stats(self, component: str, payload: str, ttl_seconds: float) -> None:
        with translated():
            self.redis.set(keys.stats(component), payload, px=max(1, int(ttl_seconds * 1000)))

    def job_hash(self, job_id: str) -> dict[str, str]:
        with translated():
            return cast(dict[str, str], self.redis.hgetall(keys.job(job_id)))


def enqueue_arguments(
    job: Job, aggregation: Aggregation, job_id: str, now: float, meta_ttl: int
) -> tuple[list[str], list[Any]]:
    fields = dataclasses.replace(job, id=job_id).to_hash()
    k = [
        keys.job(job_id),
        keys.aggregation(aggregation.id),
        keys.queue(aggregation.id),
        keys.job_meta(job_id),
        keys.job_options(job_id),
    ]
    a: list[Any] = [
        repr(now),
        aggregation.limit,
        aggregation.proxy,
        meta_ttl,
        aggregation.id,
        job_id,
        keys.WAKEUP_CHANNEL,
        job.options.encode(),
        *_flatten(fields),
    ]
    return k, a


class AsyncStore:
    """What the API needs, on redis.asyncio."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        meta_ttl: int = keys.JOB_META_TTL_SECONDS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.redis = client
        self.meta_ttl = meta_ttl
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._follower: asyncio.Task[None] | None = None
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._retry = client.register_script(scripts.RETRY_CALLBACK)

    @classmethod
    def from_url(cls, url: str) -> AsyncStore:
        return cls(redis_client.connect_url_async(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncStore:
        """Call it inside the event loop: with Sentinel it starts following the primary."""
        store = cls(
            redis_client.connect_async(settings),
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
        store._follower = asyncio.get_running_loop().create_task(
            redis_client.follow_primary_async(store.redis)
        )
        return store

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.redis.aclose()

    async def ping(self) -> None:
        with translated():
            await self.redis.ping()

    async def enqueue(self, job: Job, aggregation: Aggregation, now: float | None = None) -> str | None:
        """The new job's id, or None after ID_ATTEMPTS collisions (astronomically unlikely)."""
        now = time.time() if now is None else now
        with translated():
            for _ in range(ID_ATTEMPTS):
                job_id = new_job_id()
                k, a = enqueue_arguments(job, aggregation, job_id, now, self.meta_ttl)
                if await self._enqueue_durably(k, a):
                    return job_id
        return None

    async def _enqueue_durably(self, k: list[str], a: list[Any]) -> bool:
        """Run the enqueue script; with `wait_replicas`, WAIT on the same connection so the
        201 is only sent once that many replicas hold the job (a failover cannot lose it)."""
        if not self.wait_replicas:
            return bool(await self._enqueue(keys=k, args=a))
        pipe = self.redis.pipeline(transaction=False)
        await self._enqueue(keys=k, args=a, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        created, acked = await pipe.execute()
        if created and int(acked) < self.wait_replicas:
            log.warning(
                "job %s acknowledged by %d of %d replicas within %d ms; a failover now could lose it",
                k[0], acked, self.wait_replicas, self.wait_timeout_ms,
            )  # fmt: skip
        return bool(created)

    async def job_hash(self, job_id: str) -> dict[str, str]:
        with translated():
            return cast(dict[str, str], await self.redis.hgetall(keys.job(job_id)))

    async def retry_callback(self, job_id: str, now: float | None = None) -> str | None:
        """ "OK" when rescheduled, the callback state when it is not Failed, None if no job."""
        now = time.time() if now is None else now
        with translated():
            reply = await self._retry(keys=[keys.job(job_id), keys.CALLBACK_QUEUE], args=[job_id, repr(now)])
        return None if reply is None else str(reply)

    async def stats(self, component: str) -> str | None:
        with translated():
            return cast(str | None, await self.redis.get(keys.stats(component)))

    async def queue_sizes(self) -> list[tuple[str, int]]:
        """(`jobs:<aggr>`, queued ids) for every aggregation with a queue, in SCAN order."""
        with translated():
            names = [k async for k in self.redis.scan_iter(match=keys.QUEUE_PATTERN, count=1000)]
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.zcard(name)
            sizes = await pipe.execute(raise_on_error=False)
        return [
            (name, size if isinstance(size, int) else -1) for name, size in zip(names, sizes, strict=True)
        ]

    async def job_status(self, job_id: str) -> JobStatus | None:
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.job(job_id))
            pipe.hgetall(keys.job_meta(job_id))
            pipe.lrange(keys.job_errors(job_id), 0, -1)
            pipe.get(keys.job_options(job_id))
            raw, meta, errors, options = await pipe.execute()
            if not raw or not raw.get("ID"):
                return None
            job = Job.from_hash(raw, options)
            pipe = self.redis.pipeline(transaction=False)
            pipe.zscore(keys.queue(job.aggr_id), job_id)
            pipe.zscore(keys.inflight(job.aggr_id), job_id)
            queued_at, lease = await pipe.execute()
        return JobStatus(job=job, meta=meta, errors=errors, queued_at=queued_at, lease_expires_at=lease)
