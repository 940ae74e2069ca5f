"""The Redis layer: every read and write of jobs, queues, leases and stats goes through here.

`Store` (blocking, thread-safe) serves workers and notifiers; `AsyncStore` serves the API.
State changes run as the Lua scripts of `scripts`, with key names from `keys`. Redis
errors leave this module as `StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import redis
import redis.asyncio

from downloader.errors import StoreError
from downloader.jobs.models import DEFAULT_AGGREGATION_LIMIT, DEFAULT_MAX_RETRIES, Aggregation, Job
from downloader.store import keys, redis_client, scripts
from downloader.version import __version__

if TYPE_CHECKING:
    from downloader.config.settings import Settings

log = logging.getLogger("downloader.store")

ID_ATTEMPTS = 3
#: Backoff of the wakeup listener between failed subscriptions (seconds).
RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX = 0.5, 10.0
#: With `wait_replicas`, a new job waits in its queue this far in the future until enough
#: replicas acknowledged it, so no worker starts a job that may yet be undone. Longer than a
#: WAIT and a few retries; should it run out first, a worker may take the job, and the undo
#: then leaves it alone (the job stands, answered 201). An API that dies meanwhile, or a
#: release lost to a failover, leaves the job this late, never lost.
HOLD_SECONDS = 30.0
#: What a 503 for a job too few replicas acknowledged tells the client to wait: a replica that
#: fell behind or reconnects catches up within seconds.
NOT_REPLICATED_RETRY_AFTER = 5
#: How long `RESCUE_LOCK` outlives a sweeper that died (renewed after every page).
RESCUE_LOCK_SECONDS = 60


def new_job_id() -> str:
    """14 url-safe characters from 10 random bytes of a cryptographic source."""
    return secrets.token_urlsafe(10)


def new_token() -> str:
    """A lease holder's identity; fences writes of a process whose lease was taken back."""
    return secrets.token_hex(8)


class NotReplicated(StoreError):
    """Fewer replicas than `wait_replicas` acknowledged a new job in time: it was undone, so
    nothing is queued, and the client may send it again after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int = NOT_REPLICATED_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
class ClaimedJob:
    """A job as a claim reads it: the original's hash, and our encoded `JobOptions`."""

    raw: dict[str, str]
    options: str = ""
    result: str = ""
    """Encoded `DownloadResult` (read by the notifier only)."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """What one claim attempt on an aggregation gave: its jobs, marked InProgress and read in
    the same step (an empty hash: the job is gone), or why none."""

    jobs: dict[str, ClaimedJob] = dataclasses.field(default_factory=dict)
    aggregation: Aggregation | None = None
    full: bool = False
    paused: bool = False
    next_ready: float | None = None
    empty: bool = False
    """Nothing is queued (`idle`: nothing is claimed either, and it left the registry)."""
    idle: bool = False

    @property
    def ids(self) -> list[str]:
        return list(self.jobs)


@dataclasses.dataclass(frozen=True)
class CallbackClaim:
    """Callbacks claimed for delivery (their attempt counted; None: the job is gone), and when
    the next one is due if none is due now."""

    jobs: dict[str, ClaimedJob | None]
    next_due: float | None = None

    @property
    def ids(self) -> list[str]:
        return list(self.jobs)


@dataclasses.dataclass(frozen=True)
class Recovered:
    """What a lease recovery pass did: (aggregation, job, RECOVER's result) of each expired
    download lease, and how many callbacks went back to their queue."""

    downloads: list[tuple[str, str, int]]
    callbacks: int
    next_due_in: float | None = None
    """Seconds until the next lease held anywhere expires; None when none is held."""


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
    counted_as: str = ""
    """For the dashboard's per-minute counts: "ok", "failed", "retried", or "" (not counted)."""
    failure: str = ""
    """JSON record for the dashboard's recent failures ("" for none)."""


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """Why a claimed job was set aside unread (`keys.DEAD_LETTERS`)."""

    aggr_id: str
    reason: str
    at: float

    def encode(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> DeadLetter:
        try:
            values = json.loads(raw)
            return cls(
                str(values.get("aggr_id", "")), str(values.get("reason", "")), float(values.get("at", 0))
            )
        except (ValueError, TypeError, AttributeError):
            return cls("", raw, 0.0)  # written by hand: shown as it is


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Everything GET /jobs/<id> shows."""

    job: Job
    meta: dict[str, str]
    errors: list[str]
    queued_at: float | None
    lease_expires_at: float | None
    dead_letter: DeadLetter | None = None
    """Set aside as unreadable: `job` then holds only what could be read of its hash."""


class Store:
    """Blocking access for workers and notifiers (one instance shared by all threads)."""

    def __init__(self, client: redis.Redis, *, meta_ttl: int = keys.JOB_META_TTL_SECONDS) -> None:
        self.redis = client
        self.meta_ttl = meta_ttl
        self._key_ttls = _KeyTTLs()
        self._stats_written: dict[str, tuple[str, float]] = {}
        register = client.register_script
        self._claim = register(scripts.CLAIM_DOWNLOADS)
        self._renew = register(scripts.RENEW)
        self._finish = register(scripts.FINISH)
        self._drop_claim = register(scripts.DROP_CLAIM)
        self._recover = register(scripts.RECOVER)
        self._recover_due = register(scripts.RECOVER_DUE)
        self._claim_callbacks = register(scripts.CLAIM_CALLBACKS)
        self._delivered = register(scripts.CALLBACK_DELIVERED)
        self._undelivered = register(scripts.CALLBACK_UNDELIVERED)
        self._claim_deletions = register(scripts.CLAIM_DELETIONS)
        self._delete_idle = register(scripts.DELETE_IDLE_AGGREGATION)
        self._enqueue = register(scripts.ENQUEUE)
        self._rescue = register(scripts.RESCUE_ORPHAN)
        self._record_attempt = register(scripts.RECORD_ATTEMPT)
        self._retry_callback = register(scripts.RETRY_CALLBACK)

    @classmethod
    def from_url(cls, url: str) -> Store:
        """Straight to `url` (tests and tools); processes use `from_settings` (Sentinel aware)."""
        return cls(redis_client.connect_url(url))

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

    def registered_aggregations(self) -> set[str]:
        """The aggregations with queued or claimed jobs (the registry; no keyspace SCAN)."""
        with translated():
            return cast(set[str], self.redis.smembers(keys.AGGREGATIONS))

    def take_adoption_turn(self, interval_seconds: float) -> bool:
        """True for the one process of the fleet whose turn it is to run the adoption sweep
        (at most once per interval, whoever asks first)."""
        with translated():
            return bool(
                self.redis.set(
                    keys.ADOPTION_LOCK, new_token(), nx=True, px=max(1, int(interval_seconds * 1000))
                )
            )

    def adopt_unregistered(self, batch: int = 1000, pause: float = 0.01) -> int:
        """Register the queues and leases no registry knows of: queues written by the original's
        API, and those of versions before the registry. The only keyspace SCAN, paced
        (`pause` between batches) so that even millions of keys cost Redis little."""
        adopted = 0
        with translated():
            for pattern, name_of in (
                (keys.QUEUE_PATTERN, keys.aggregation_from_queue),
                (keys.INFLIGHT_PATTERN, keys.aggregation_from_inflight),
            ):
                cursor = 0
                while True:
                    cursor, found = self.redis.scan(cursor, match=pattern, count=batch)
                    ids = [name_of(k) for k in cast(list[str], found)]
                    if ids:
                        pipe = self.redis.pipeline(transaction=False)
                        pipe.sadd(keys.AGGREGATIONS, *ids)
                        if pattern == keys.INFLIGHT_PATTERN:
                            pipe.zadd(keys.LEASES_DUE, dict.fromkeys(ids, 0), nx=True)
                        adopted += int(pipe.execute()[0])
                    if cursor == 0:
                        break
                    time.sleep(pause)
        return adopted

    def listen_wakeups(
        self,
        stop: threading.Event,
        on_wakeup: Callable[[str], None],
        *,
        channel: str = keys.WAKEUP_CHANNEL,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Call `on_wakeup(message)` for every announcement on `channel` until `stop`,
        resubscribing after Redis outages with backoff. `on_subscribed` runs after every
        subscription: what was announced while unsubscribed is lost, so the caller looks again."""
        delay = 0.0
        while not stop.is_set():
            if self._listen_once(stop, on_wakeup, channel, on_subscribed):
                delay = 0.0  # it was subscribed: a new outage starts with a short wait
            delay = min(RESUBSCRIBE_MAX, max(RESUBSCRIBE_FIRST, delay * 2))
            stop.wait(delay)

    def _listen_once(
        self,
        stop: threading.Event,
        on_wakeup: Callable[[str], None],
        channel: str,
        on_subscribed: Callable[[], None] | None,
    ) -> bool:
        """One subscription until `stop` or a Redis error; True if it got subscribed."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        subscribed = False
        try:
            pubsub.subscribe(channel)
            subscribed = True
            log.debug("subscribed to %s", channel)
            if on_subscribed is not None:
                on_subscribed()
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    on_wakeup(str(message["data"]))
        except (redis.RedisError, StoreError) as exc:
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
                        keys.AGGREGATIONS,
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

    def downloads_per_host(self, aggr_id: str) -> dict[str, int]:
        """Downloads in flight of one aggregation per live worker's host (its pod name): the
        leases name their worker's token, the `instances:worker` entries its host."""
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hvals(keys.leases(aggr_id))
            pipe.zrangebyscore(keys.instances("worker"), repr(time.time()), "+inf")
            holders, members = pipe.execute()
        host_of = {worker.id: worker.host for worker in (Instance.decode("worker", m) for m in members)}
        counts: dict[str, int] = {}
        for token in holders:
            host = host_of.get(token)
            if host is not None:
                counts[host] = counts.get(host, 0) + 1
        return counts

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
                call = enqueue_call(job=job, aggregation=aggregation, job_id=new_job_id(), now=now)
                if self._enqueue(keys=call.keys, args=call.args):  # 2: ours, its first reply lost
                    return call.job_id
        raise StoreError(f"Could not find unique ID after {ID_ATTEMPTS} tries for {job.job_string()}")

    # --- download leases --------------------------------------------------------

    def claim(
        self, aggr_id: str, wanted: int, token: str, lease_seconds: float, now: float | None = None
    ) -> Claim:
        """Claim up to `wanted` jobs due by `now`, mark them InProgress and read them, in one
        round trip; their leases run `lease_seconds` on Redis's clock."""
        now = time.time() if now is None else now
        call = claim_call(
            aggr_id=aggr_id,
            wanted=wanted,
            token=token,
            call_id=new_token(),
            lease_seconds=lease_seconds,
            now=now,
            meta_ttl=self.meta_ttl,
        )
        with translated():
            reply = cast(list[Any], self._claim(keys=call.keys, args=call.args))
        status = reply[0]
        if status == "ok":
            jobs: dict[str, ClaimedJob] = {}
            for job_id, flat, options in zip(reply[2::3], reply[3::3], reply[4::3], strict=True):
                raw = _pairs(flat)
                if raw:
                    raw["DownloadState"] = "InProgress"  # as the script just wrote it
                jobs[job_id] = ClaimedJob(raw, options[0])
            return Claim(jobs, Aggregation.from_hash(aggr_id, _pairs(reply[1])))
        if status in ("full", "paused", "empty", "idle"):
            return Claim(
                full=status == "full",
                paused=status == "paused",
                empty=status in ("empty", "idle"),
                idle=status == "idle",
            )
        return Claim(next_ready=float(status))

    def renew(self, aggr_id: str, ids: Sequence[str], token: str, lease_seconds: float) -> list[str]:
        """Extend our leases by `lease_seconds` from now on Redis's clock; returns the ids whose
        lease we no longer hold."""
        if not ids:
            return []
        with translated():
            return cast(
                list[str],
                self._renew(
                    keys=[keys.inflight(aggr_id), keys.leases(aggr_id)],
                    args=[repr(lease_seconds), token, *ids],
                ),
            )

    def finish(self, job: Job, token: str, outcome: Outcome, now: float | None = None) -> int:
        """Write the outcome of an attempt if `token` still holds the job's lease: 1 done,
        0 lease lost, -1 the job's hash vanished meanwhile."""
        now = time.time() if now is None else now
        call = finish_call(
            job=job, token=token, call_id=new_token(), outcome=outcome, now=now, meta_ttl=self.meta_ttl
        )
        with translated():
            return int(self._finish(keys=call.keys, args=call.args))

    def drop_claim(self, aggr_id: str, job_id: str, token: str) -> bool:
        """Forget a claimed id whose job hash is gone (nothing to run); False: lease lost."""
        call = drop_claim_call(aggr_id=aggr_id, job_id=job_id, token=token)
        with translated():
            return bool(self._drop_claim(keys=call.keys, args=call.args))

    def set_aside(
        self, aggr_id: str, job_id: str, token: str, *, reason: str, url: str = "", now: float | None = None
    ) -> bool:
        """Set aside a claimed job whose hash cannot be read: a dead letter with `reason`, listed
        among the dashboard's recent failures; its hash stays as found, in no queue. False: the
        lease was lost (whoever holds it now decides)."""
        now = time.time() if now is None else now
        # Capped texts, as FINISH's failure records: a hostile hash must not grow the list.
        letter = DeadLetter(aggr_id, reason[:2048], now)
        failure = json.dumps(
            {
                "id": job_id,
                "aggr_id": aggr_id,
                "url": url[:2048],
                "code": "",
                "at": now,
                "error": f"unreadable job, set aside: {letter.reason}",
            }
        )
        call = drop_claim_call(
            aggr_id=aggr_id, job_id=job_id, token=token, dead_letter=letter, failure=failure
        )
        with translated():
            return bool(self._drop_claim(keys=call.keys, args=call.args))

    def dead_letter(self, job_id: str) -> DeadLetter | None:
        with translated():
            raw = cast(str | None, self.redis.hget(keys.DEAD_LETTERS, job_id))
        return None if raw is None else DeadLetter.decode(raw)

    def expired_leases(self, aggr_id: str) -> list[str]:
        """Leases of the aggregation past their expiry on Redis's clock (`recover` checks again)."""
        with translated():
            now = self._redis_now()
            return cast(
                list[str],
                self.redis.zrangebyscore(keys.inflight(aggr_id), "-inf", repr(now), start=0, num=500),
            )

    def _redis_now(self) -> float:
        seconds, micros = self.redis.time()
        return seconds + micros / 1_000_000

    def recover(
        self, aggr_id: str, job_id: str, *, crash_tolerance: int, error: str, now: float | None = None
    ) -> int:
        """Give back one job whose lease expired on Redis's clock (processes run `recover_due`)."""
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
                        aggr_id,
                        keys.WAKEUP_CHANNEL,
                        keys.CALLBACK_WAKEUP_CHANNEL,
                    ],
                )
            )

    def recover_due(
        self,
        *,
        crash_tolerance: int,
        error: str,
        max_aggregations: int = 100,
        max_leases: int = 500,
        now: float | None = None,
    ) -> Recovered:
        """One pass of the fleet's lease recovery: download leases of the aggregations whose
        earliest lease is due, then callback leases; expired ones go back to their queues
        (queued again at `now`)."""
        now = time.time() if now is None else now
        with translated():
            reply = cast(
                list[Any],
                self._recover_due(
                    keys=[keys.LEASES_DUE, keys.CALLBACK_QUEUE, keys.CALLBACK_INFLIGHT, keys.CALLBACK_LEASES],
                    args=[
                        repr(now),
                        crash_tolerance,
                        DEFAULT_MAX_RETRIES,
                        error,
                        self.meta_ttl,
                        keys.JOB_ERRORS_KEPT,
                        keys.WAKEUP_CHANNEL,
                        keys.CALLBACK_WAKEUP_CHANNEL,
                        max_aggregations,
                        max_leases,
                        keys.QUEUE_PREFIX,
                        keys.INFLIGHT_PREFIX,
                        keys.LEASES_PREFIX,
                        keys.JOB_PREFIX,
                        keys.JOB_META_PREFIX,
                        keys.JOB_ERRORS_PREFIX,
                    ],
                ),
            )
        *flat, callbacks, next_due = reply
        downloads = [
            (str(a), str(j), int(r)) for a, j, r in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        ]
        return Recovered(downloads, int(callbacks), float(next_due) if next_due else None)

    # --- callbacks --------------------------------------------------------------

    def claim_callbacks(
        self, wanted: int, token: str, lease_seconds: float, now: float | None = None
    ) -> CallbackClaim:
        """Claim up to `wanted` callbacks due by `now`, count their attempt and read them."""
        now = time.time() if now is None else now
        with translated():
            reply = cast(
                list[Any],
                self._claim_callbacks(
                    keys=[keys.CALLBACK_QUEUE, keys.CALLBACK_INFLIGHT, keys.CALLBACK_LEASES],
                    args=[
                        repr(now),
                        repr(lease_seconds),
                        wanted,
                        token,
                        keys.JOB_PREFIX,
                        keys.JOB_OPTIONS_PREFIX,
                        keys.JOB_META_PREFIX,
                    ],
                ),
            )
        next_due, *per_job = reply
        jobs: dict[str, ClaimedJob | None] = {
            job_id: ClaimedJob(_pairs(flat), options[0], result[0]) if flat else None
            for job_id, flat, options, result in zip(
                per_job[::4], per_job[1::4], per_job[2::4], per_job[3::4], strict=True
            )
        }
        return CallbackClaim(jobs, float(next_due) if next_due else None)

    def renew_callbacks(self, ids: Sequence[str], token: str, lease_seconds: float) -> list[str]:
        """Extend the leases of callbacks being delivered; returns those no longer ours."""
        if not ids:
            return []
        with translated():
            return cast(
                list[str],
                self._renew(
                    keys=[keys.CALLBACK_INFLIGHT, keys.CALLBACK_LEASES],
                    args=[repr(lease_seconds), token, *ids],
                ),
            )

    def rescue_orphans(self, batch: int = 1000, pause: float = 0.0) -> dict[str, int] | None:
        """Queue again the jobs no queue knows of (left by the original's crashes); None when
        another process of the fleet is sweeping right now (`RESCUE_LOCK`).

        One SCAN over `job:*`, a page at a time: a pipeline reads the page's jobs, a second one
        asks the queues of those whose state says they should be in one, and only the jobs
        that look orphaned are re-checked atomically by a script (a job another process holds
        is never touched): three round trips per page instead of two per job.
        """
        found = {"download": 0, "callback": 0}
        now = time.time()
        token = new_token()
        with translated():
            if not self.redis.set(keys.RESCUE_LOCK, token, nx=True, ex=RESCUE_LOCK_SECONDS):
                return None
            try:
                cursor = 0
                while True:
                    cursor, page = self.redis.scan(cursor, match=keys.JOB_PATTERN, count=batch)
                    self._rescue_page(cast(list[str], page), now, found)
                    if not cursor:
                        return found
                    self.redis.expire(keys.RESCUE_LOCK, RESCUE_LOCK_SECONDS)
                    if pause:
                        time.sleep(pause)
            finally:
                if self.redis.get(keys.RESCUE_LOCK) == token:
                    self.redis.delete(keys.RESCUE_LOCK)

    def _rescue_page(self, job_keys: list[str], now: float, found: dict[str, int]) -> None:
        if not job_keys:
            return
        read = self.redis.pipeline(transaction=False)
        for job_key in job_keys:
            read.hmget(job_key, "AggrID", "DownloadState", "CallbackState")
        jobs = [
            (job_key[len(keys.JOB_PREFIX) :], aggr, download, callback)
            for job_key, (aggr, download, callback) in zip(job_keys, read.execute(), strict=True)
            if aggr
        ]
        # Where each job's state says it must be: a callback InProgress in the callback
        # queue or lease; a download Pending or InProgress in its aggregation's queue or lease.
        where: list[tuple[str, ...]] = []
        for _, aggr, download, callback in jobs:
            places: tuple[str, ...] = ()
            if callback == "InProgress":
                places = (keys.CALLBACK_QUEUE, keys.CALLBACK_INFLIGHT)
            elif download in ("Pending", "InProgress"):
                places = (keys.queue(aggr), keys.inflight(aggr))
            where.append(places)
        look = self.redis.pipeline(transaction=False)
        for (job_id, *_), places in zip(jobs, where, strict=True):
            for place in places:
                look.zscore(place, job_id)
        scores = iter(look.execute())
        rescue = self.redis.pipeline(transaction=False)
        for (job_id, aggr, _, _), places in zip(jobs, where, strict=True):
            if places and [next(scores) for _ in places] == [None] * len(places):
                call = rescue_orphan_call(job_id=job_id, aggr_id=aggr, now=now)
                self._rescue(keys=call.keys, args=call.args, client=rescue)
        for kind in rescue.execute():
            if kind:
                found[str(kind)] += 1

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
        *,
        delete_at: float | None = None,
        location: str = "",
    ) -> int:
        """Record a failed delivery (`fields`), queued again at `retry_at`; or, Failed for good,
        kept until `delete_at` and then deleted with its file at `location`."""
        now = time.time() if now is None else now
        # The meta (timestamps /jobs shows) must not expire before the hash it describes.
        meta_ttl = self.meta_ttl if delete_at is None else max(self.meta_ttl, int(delete_at - now) + 86400)
        with translated():
            return int(
                self._undelivered(
                    keys=[
                        keys.CALLBACK_INFLIGHT,
                        keys.CALLBACK_LEASES,
                        keys.job(job_id),
                        keys.CALLBACK_QUEUE,
                        keys.job_meta(job_id),
                        keys.DELETION_QUEUE,
                        keys.DELETION_TARGETS,
                    ],
                    args=[
                        job_id,
                        token,
                        "" if retry_at is None else repr(retry_at),
                        repr(now),
                        meta_ttl,
                        "" if delete_at is None else repr(delete_at),
                        location,
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

    # --- file deletion ----------------------------------------------------------

    def claim_deletions(
        self, wanted: int, retry_after: float, now: float | None = None
    ) -> tuple[list[str], float | None]:
        """File deletions due by `now` (pushed back by `retry_after` until done), and when the
        next one is due if none is due now."""
        now = time.time() if now is None else now
        with translated():
            next_due, *ids = cast(
                list[str],
                self._claim_deletions(
                    keys=[keys.DELETION_QUEUE], args=[repr(now), wanted, repr(now + retry_after)]
                ),
            )
        return ids, float(next_due) if next_due else None

    def deletion_targets(self, ids: Sequence[str]) -> dict[str, str]:
        """The encoded file Location of each id that has one recorded."""
        if not ids:
            return {}
        with translated():
            found = cast(list[str | None], self.redis.hmget(keys.DELETION_TARGETS, list(ids)))
        return {job_id: target for job_id, target in zip(ids, found, strict=True) if target}

    def deletions_done(self, ids: Sequence[str]) -> None:
        """Forget the deletions of `ids` (their files are gone) and whatever is left of their
        jobs: three commands however many. Not atomic, and need not be: an entry left by a
        crash half-way is deleted again later, which is harmless."""
        if not ids:
            return
        per_job = (keys.job, keys.job_meta, keys.job_errors, keys.job_options)
        doomed = [key_of(job_id) for job_id in ids for key_of in per_job]
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(keys.DELETION_QUEUE, *ids)
            pipe.hdel(keys.DELETION_TARGETS, *ids)
            pipe.delete(*doomed)
            pipe.execute()

    # --- stats and reads ----------------------------------------------------------

    def write_stats(self, component: str, payload: str, ttl_seconds: float) -> None:
        """`stats:<component>`; the same payload again only once half its TTL has passed, so
        an idle process does not rewrite its unchanged counters every interval."""
        now = time.monotonic()
        last = self._stats_written.get(component)
        if last is not None and last[0] == payload and now - last[1] < ttl_seconds / 2:
            return
        with translated():
            self.redis.set(keys.stats(component), payload, px=max(1, int(ttl_seconds * 1000)))
        self._stats_written[component] = (payload, now)

    def job_hash(self, job_id: str) -> dict[str, str]:
        with translated():
            return cast(dict[str, str], self.redis.hgetall(keys.job(job_id)))

    # --- what the web dashboard reads (instances, per-minute counts, recent failures) ---

    def heartbeat(self, instance: Instance, now: float | None = None) -> None:
        with translated():
            added = _heartbeat(
                self.redis.pipeline(transaction=False), instance, now, self._key_ttls
            ).execute()[0]
            if added:
                _prune_instances(self.redis.pipeline(transaction=False), instance.role, now).execute()

    def record_attempt(self, aggr_id: str, kind: str, failure: str = "", now: float | None = None) -> None:
        """Count one finished attempt (`ok`, `failed` or `retried`) in its minute; a `failure`
        record (JSON) goes to the capped list of recent failures. What FINISH counts, with the
        same Lua, for writing the dashboard's history (tests, tools)."""
        now = time.time() if now is None else now
        with translated():
            self._record_attempt(
                keys=[keys.throughput(int(now // 60)), keys.RECENT_FAILURES],
                args=[kind, aggr_id, failure, keys.THROUGHPUT_TTL_SECONDS, keys.RECENT_FAILURES_KEPT],
            )

    # --- bulk tools (`downloader enqueue`, `downloader retry`) ------------------------

    def enqueue_many(self, jobs: Sequence[tuple[Job, Aggregation]], now: float | None = None) -> list[str]:
        """Queue many jobs with the API's script, pipelined in one round trip; their ids in order."""
        now = time.time() if now is None else now
        ids = [new_job_id() for _ in jobs]
        pending = list(range(len(jobs)))
        with translated():
            for _ in range(ID_ATTEMPTS):
                pipe = self.redis.pipeline(transaction=False)
                for i in pending:
                    call = enqueue_call(job=jobs[i][0], aggregation=jobs[i][1], job_id=ids[i], now=now)
                    self._enqueue(keys=call.keys, args=call.args, client=pipe)
                created = pipe.execute()  # 2: ours, written by this pipeline before its reply was lost
                pending = [i for i, ok in zip(pending, created, strict=True) if not ok]
                if not pending:
                    return ids
                for i in pending:  # an id collision: only those jobs try again, with new ids
                    ids[i] = new_job_id()
        raise StoreError(
            f"Could not find unique ID after {ID_ATTEMPTS} tries for {jobs[pending[0]][0].job_string()}"
        )

    def scan_callback_states(self, batch: int = 1000) -> Iterator[list[tuple[str, str, str]]]:
        """(job id, aggregation, CallbackState) of every `job:*` hash, one SCAN batch at a time."""
        cursor = 0
        with translated():
            while True:
                cursor, scanned = self.redis.scan(cursor, match=keys.JOB_PATTERN, count=batch)
                found = cast(list[str], scanned)
                pipe = self.redis.pipeline(transaction=False)
                for job_key in found:
                    pipe.hmget(job_key, ["AggrID", "CallbackState"])
                rows = pipe.execute() if found else []
                yield [
                    (k[len(keys.JOB_PREFIX) :], a or "", c or "")
                    for k, (a, c) in zip(found, rows, strict=True)
                ]
                if cursor == 0:
                    return

    def retry_callbacks(self, ids: Sequence[str], now: float | None = None) -> list[str | None]:
        """POST /retry's script for each id, pipelined: "OK", the state when not Failed, or
        None for a job that does not exist."""
        now = time.time() if now is None else now
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                self._retry_callback(
                    keys=[keys.job(job_id), keys.CALLBACK_QUEUE, keys.DELETION_QUEUE, keys.DELETION_TARGETS],
                    args=[job_id, repr(now), keys.CALLBACK_WAKEUP_CHANNEL],
                    client=pipe,
                )
            replies = pipe.execute() if ids else []
        return [None if r is None else str(r) for r in replies]


# --- the download side's script calls --------------------------------------------------
#
# One keyword-only wrapper per script builds its KEYS and ARGV, in the order the script names
# them at its top: no caller can pass too few arguments or swap two. Sync and async clients
# share them. Every call that must recognise its own retry carries an id of its own.


class ScriptCall(NamedTuple):
    keys: list[str]
    args: list[Any]
    job_id: str = ""


def enqueue_call(
    *, job: Job, aggregation: Aggregation, job_id: str, now: float, held_until: float | None = None
) -> ScriptCall:
    """ENQUEUE of `job` under `job_id`, queued at `now`; or, `held_until` given, queued at that
    score and not announced until RELEASE_HELD (see `HOLD_SECONDS`)."""
    fields = dataclasses.replace(job, id=job_id).to_hash()
    return ScriptCall(
        keys=[
            keys.job(job_id),
            keys.aggregation(aggregation.id),
            keys.queue(aggregation.id),
            keys.job_options(job_id),
            keys.AGGREGATIONS,
            keys.DELETION_QUEUE,
        ],
        args=[
            repr(now if held_until is None else held_until),
            aggregation.limit,
            aggregation.proxy,
            aggregation.id,
            job_id,
            keys.WAKEUP_CHANNEL if held_until is None else "",
            job.options.encode(),
            *_flatten(fields),
        ],
        job_id=job_id,
    )


def release_held_call(*, job_id: str, aggr_id: str, score: float) -> ScriptCall:
    return ScriptCall(keys=[keys.queue(aggr_id)], args=[job_id, repr(score), keys.WAKEUP_CHANNEL, aggr_id])


def undo_held_call(*, job_id: str, aggr_id: str, held_until: float) -> ScriptCall:
    return ScriptCall(
        keys=[keys.job(job_id), keys.queue(aggr_id), keys.job_options(job_id)],
        args=[job_id, repr(held_until)],
    )


def claim_call(
    *, aggr_id: str, wanted: int, token: str, call_id: str, lease_seconds: float, now: float, meta_ttl: int
) -> ScriptCall:
    return ScriptCall(
        keys=[
            keys.queue(aggr_id),
            keys.inflight(aggr_id),
            keys.leases(aggr_id),
            keys.aggregation(aggr_id),
            keys.PAUSED_AGGREGATIONS,
            keys.MANAGED_AGGREGATIONS,
            keys.AGGREGATIONS,
            keys.LEASES_DUE,
            keys.claim_receipt(call_id),
        ],
        args=[
            repr(now),
            repr(lease_seconds),
            wanted,
            token,
            DEFAULT_AGGREGATION_LIMIT,
            aggr_id,
            meta_ttl,
            keys.JOB_PREFIX,
            keys.JOB_META_PREFIX,
            keys.JOB_OPTIONS_PREFIX,
        ],
    )


def finish_call(
    *, job: Job, token: str, call_id: str, outcome: Outcome, now: float, meta_ttl: int
) -> ScriptCall:
    target = outcome.target or keys.queue(job.aggr_id)
    channel = {
        keys.CALLBACK_QUEUE: keys.CALLBACK_WAKEUP_CHANNEL,
        keys.queue(job.aggr_id): keys.WAKEUP_CHANNEL,
    }
    return ScriptCall(
        keys=[
            keys.inflight(job.aggr_id),
            keys.leases(job.aggr_id),
            keys.job(job.id),
            target,
            keys.job_meta(job.id),
            keys.job_errors(job.id),
            keys.DELETION_TARGETS,
            keys.throughput(int(now // 60)),
            keys.RECENT_FAILURES,
        ],
        args=[
            job.id,
            token,
            call_id,
            repr(outcome.score) if outcome.target else "",
            repr(now),
            outcome.error,
            keys.JOB_ERRORS_KEPT,
            meta_ttl,
            "1" if outcome.finished else "0",
            outcome.deletion_target,
            outcome.result,
            outcome.counted_as,
            job.aggr_id,
            outcome.failure,
            keys.THROUGHPUT_TTL_SECONDS,
            keys.RECENT_FAILURES_KEPT,
            channel.get(target, ""),
            *_flatten(outcome.fields),
        ],
    )


def rescue_orphan_call(*, job_id: str, aggr_id: str, now: float) -> ScriptCall:
    return ScriptCall(
        keys=[
            keys.job(job_id),
            keys.queue(aggr_id),
            keys.inflight(aggr_id),
            keys.CALLBACK_QUEUE,
            keys.CALLBACK_INFLIGHT,
            keys.AGGREGATIONS,
            keys.DEAD_LETTERS,
        ],
        args=[job_id, repr(now), aggr_id, keys.WAKEUP_CHANNEL, keys.CALLBACK_WAKEUP_CHANNEL],
    )


def drop_claim_call(
    *, aggr_id: str, job_id: str, token: str, dead_letter: DeadLetter | None = None, failure: str = ""
) -> ScriptCall:
    return ScriptCall(
        keys=[keys.inflight(aggr_id), keys.leases(aggr_id), keys.DEAD_LETTERS, keys.RECENT_FAILURES],
        args=[
            job_id,
            token,
            "" if dead_letter is None else dead_letter.encode(),
            failure,
            keys.RECENT_FAILURES_KEPT,
        ],
    )


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
        self._key_ttls = _KeyTTLs()
        self._follower: asyncio.Task[None] | None = None
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._release_held = client.register_script(scripts.RELEASE_HELD)
        self._undo_held = client.register_script(scripts.UNDO_HELD)
        self._retry = client.register_script(scripts.RETRY_CALLBACK)

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
        """The new job's id, or None after ID_ATTEMPTS collisions (astronomically unlikely).
        NotReplicated: too few replicas acknowledged it in time, and it was undone."""
        now = time.time() if now is None else now
        with translated():
            for _ in range(ID_ATTEMPTS):
                job_id = new_job_id()
                if await self._enqueue_durably(job, aggregation, job_id, now):
                    return job_id
        return None

    async def _enqueue_durably(self, job: Job, aggregation: Aggregation, job_id: str, now: float) -> bool:
        """Run the enqueue script (False: the id is taken). With `wait_replicas`, the job is
        held (no worker can start it) while WAIT, on the same connection, counts the replicas
        that hold it: enough, and it is released into its queue; too few, and it is undone and
        NotReplicated raised, so a 201 always means a failover cannot lose the job and a 503
        that nothing was queued (a client that sends the job again makes one job, not two)."""
        if not self.wait_replicas:
            call = enqueue_call(job=job, aggregation=aggregation, job_id=job_id, now=now)
            return bool(await self._enqueue(keys=call.keys, args=call.args))
        held_until = now + HOLD_SECONDS
        call = enqueue_call(job=job, aggregation=aggregation, job_id=job_id, now=now, held_until=held_until)
        pipe = self.redis.pipeline(transaction=False)
        await self._enqueue(keys=call.keys, args=call.args, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        created, acked = await pipe.execute()
        if not created:
            return False
        if int(acked) >= self.wait_replicas:
            release = release_held_call(job_id=job_id, aggr_id=aggregation.id, score=now)
            try:
                await self._release_held(keys=release.keys, args=release.args)
            except redis.RedisError as exc:  # the job is safe with the replicas: it starts late
                log.warning(
                    "job %s is queued but could not be released (%s): it starts within %d s",
                    job_id,
                    exc,
                    HOLD_SECONDS,
                )
            return True
        undo = undo_held_call(job_id=job_id, aggr_id=aggregation.id, held_until=held_until)
        if not await self._undo_held(keys=undo.keys, args=undo.args):
            # Not held any more: a worker whose clock runs HOLD_SECONDS ahead took it. It runs;
            # undoing it now would leave half a job, so it stays, unreplicated, as before.
            log.warning(
                "job %s acknowledged by %s of %d replicas within %d ms, and already claimed: kept",
                job_id,
                acked,
                self.wait_replicas,
                self.wait_timeout_ms,
            )
            return True
        log.warning(
            "job %s acknowledged by %s of %d replicas within %d ms: undone, answered 503",
            job_id,
            acked,
            self.wait_replicas,
            self.wait_timeout_ms,
        )
        raise NotReplicated(
            f"only {acked} of {self.wait_replicas} Redis replicas acknowledged the job within "
            f"{self.wait_timeout_ms} ms; nothing was queued, send it again later"
        )

    async def job_hash(self, job_id: str) -> dict[str, str]:
        with translated():
            return cast(dict[str, str], await self.redis.hgetall(keys.job(job_id)))

    async def retry_callback(self, job_id: str, now: float | None = None) -> str | None:
        """ "OK" when rescheduled, the callback state when it is not Failed, None if no job."""
        now = time.time() if now is None else now
        with translated():
            reply = await self._retry(
                keys=[keys.job(job_id), keys.CALLBACK_QUEUE, keys.DELETION_QUEUE, keys.DELETION_TARGETS],
                args=[job_id, repr(now), keys.CALLBACK_WAKEUP_CHANNEL],
            )
        return None if reply is None else str(reply)

    async def stats(self, component: str) -> str | None:
        with translated():
            return cast(str | None, await self.redis.get(keys.stats(component)))

    async def queue_sizes(self) -> list[tuple[str, int]]:
        """(`jobs:<aggr>`, queued ids) for every registered aggregation with a queue."""
        with translated():
            registered = sorted(cast(set[str], await self.redis.smembers(keys.AGGREGATIONS)))
            names = [keys.queue(aggr_id) for aggr_id in registered]
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.zcard(name)
            sizes = await pipe.execute(raise_on_error=False)
        return [
            (name, size if isinstance(size, int) else -1)
            for name, size in zip(names, sizes, strict=True)
            if size != 0  # claimed jobs only: no queue
        ]

    async def job_status(self, job_id: str) -> JobStatus | None:
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.job(job_id))
            pipe.hgetall(keys.job_meta(job_id))
            pipe.lrange(keys.job_errors(job_id), 0, -1)
            pipe.get(keys.job_options(job_id))
            pipe.hget(keys.DEAD_LETTERS, job_id)
            raw, meta, errors, options, dead = await pipe.execute()
            if not raw or (not raw.get("ID") and dead is None):
                return None
            if dead is not None:  # unreadable: shown with what can be read, and why
                letter = DeadLetter.decode(dead)
                aggr_id = letter.aggr_id or raw.get("AggrID", "")
                job = Job(id=job_id, url=raw.get("URL", ""), aggr_id=aggr_id)
                return JobStatus(job, meta, errors, queued_at=None, lease_expires_at=None, dead_letter=letter)
            job = Job.from_hash(raw, options)
            pipe = self.redis.pipeline(transaction=False)
            pipe.zscore(keys.queue(job.aggr_id), job_id)
            pipe.zscore(keys.inflight(job.aggr_id), job_id)
            queued_at, lease = await pipe.execute()
        return JobStatus(job=job, meta=meta, errors=errors, queued_at=queued_at, lease_expires_at=lease)

    # --- what the web dashboard reads -------------------------------------------------

    async def heartbeat(self, instance: Instance, now: float | None = None) -> None:
        with translated():
            pipe = _heartbeat(self.redis.pipeline(transaction=False), instance, now, self._key_ttls)
            added = (await pipe.execute())[0]
            if added:
                await _prune_instances(self.redis.pipeline(transaction=False), instance.role, now).execute()

    async def instances(self, now: float | None = None) -> dict[str, list[tuple[Instance, float]]]:
        """Live instances of each role, with when each one's entry expires."""
        now = time.time() if now is None else now
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for role in keys.INSTANCE_ROLES:
                pipe.zrangebyscore(keys.instances(role), repr(now), "+inf", withscores=True)
            replies = await pipe.execute()
        return {
            role: [(Instance.decode(role, member), float(expires)) for member, expires in reply]
            for role, reply in zip(keys.INSTANCE_ROLES, replies, strict=True)
        }

    async def backlogs(self, visible: Callable[[str], bool]) -> list[tuple[str, int, int]]:
        """(aggregation, queued, in flight) of every visible aggregation that has either."""
        with translated():
            ids = cast(set[str], await self.redis.smembers(keys.AGGREGATIONS))
            names = sorted(a for a in ids if visible(a))
            pipe = self.redis.pipeline(transaction=False)
            for aggr_id in names:
                pipe.zcard(keys.queue(aggr_id))
                pipe.zcard(keys.inflight(aggr_id))
            counts = await pipe.execute()
        rows = zip(names, counts[::2], counts[1::2], strict=True)
        return [(a, int(q), int(f)) for a, q, f in rows if q or f]

    async def aggregation_limits(self, aggr_ids: Sequence[str]) -> tuple[dict[str, int | None], set[str]]:
        """The limit of each aggregation (None once its idle hash is deleted), and the paused ones."""
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for aggr_id in aggr_ids:
                pipe.hget(keys.aggregation(aggr_id), "Limit")
            pipe.smembers(keys.PAUSED_AGGREGATIONS)
            *limits, paused = await pipe.execute()
        return {
            a: Aggregation.from_hash(a, {"Limit": raw}).limit if raw is not None else None
            for a, raw in zip(aggr_ids, limits, strict=True)
        }, set(paused)

    async def throughput(self, minutes: Sequence[int], detailed: Sequence[int]) -> dict[int, dict[str, int]]:
        """Counts per minute: the totals of `minutes`, and every field of those in `detailed`."""
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for minute in minutes:
                if minute in detailed:
                    pipe.hgetall(keys.throughput(minute))
                else:
                    pipe.hmget(keys.throughput(minute), list(ATTEMPT_KINDS))
            replies = await pipe.execute()
        out: dict[int, dict[str, int]] = {}
        for minute, reply in zip(minutes, replies, strict=True):
            pairs = reply.items() if isinstance(reply, dict) else zip(ATTEMPT_KINDS, reply, strict=True)
            out[minute] = {field: int(value) for field, value in pairs if value is not None}
        return out

    async def recent_failures(self) -> list[str]:
        with translated():
            return cast(list[str], await self.redis.lrange(keys.RECENT_FAILURES, 0, -1))

    async def callbacks_queued(self) -> int:
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(keys.CALLBACK_QUEUE)
            pipe.zcard(keys.CALLBACK_INFLIGHT)
            queued, delivering = await pipe.execute()
        return int(queued) + int(delivering)


#: The kinds of finished attempts FINISH counts (also the per-minute total fields).
ATTEMPT_KINDS = ("ok", "failed", "retried")


@dataclasses.dataclass(frozen=True)
class Instance:
    """One running process as the dashboard lists it: the member of `instances:<role>`."""

    role: str
    id: str
    host: str
    pid: int
    version: str
    started: float

    @classmethod
    def here(cls, role: str, instance_id: str | None = None, host: str = "") -> Instance:
        """This process; `host` names it (its pod, DOWNLOADER_POD_NAME), else the host name."""
        host = host or socket.gethostname()
        return cls(role, instance_id or new_token(), host, os.getpid(), __version__, time.time())

    def encode(self) -> str:
        # Fixed once the process starts: renewing the entry only moves its score.
        fields = dataclasses.asdict(self)
        del fields["role"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, role: str, member: str) -> Instance:
        try:
            raw = json.loads(member)
            return cls(
                role,
                str(raw["id"]),
                str(raw["host"]),
                int(raw["pid"]),
                str(raw["version"]),
                float(raw["started"]),
            )
        except (ValueError, KeyError, TypeError):
            return cls(role, member[:40], "?", 0, "?", 0.0)


_Pipeline = TypeVar("_Pipeline", redis.client.Pipeline, redis.asyncio.client.Pipeline)


class _KeyTTLs:
    """When each instances key's TTL is next due to be set again (INSTANCE_KEY_TTL_SECONDS,
    every half of it): a beat is then one ZADD, not two commands."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        if now < self._due.get(key, float("-inf")):
            return False
        self._due[key] = now + keys.INSTANCE_KEY_TTL_SECONDS / 2
        return True


def _heartbeat(pipe: _Pipeline, instance: Instance, now: float | None, ttls: _KeyTTLs) -> _Pipeline:
    """Renew the instance's entry, and now and then the whole key's TTL, which lets it go
    once the last process stopped renewing: an idle process costs Redis next to nothing."""
    now = time.time() if now is None else now
    key = keys.instances(instance.role)
    pipe.zadd(key, {instance.encode(): now + keys.INSTANCE_TTL_SECONDS})
    if ttls.due(key, now):
        pipe.expire(key, keys.INSTANCE_KEY_TTL_SECONDS)
    return pipe


def _prune_instances(pipe: _Pipeline, role: str, now: float | None) -> _Pipeline:
    """Drop the entries of processes that stopped renewing: done when a process starts
    (its first beat adds its entry), so stale entries never pile up across restarts."""
    now = time.time() if now is None else now
    pipe.zremrangebyscore(keys.instances(role), "-inf", repr(now))
    return pipe
