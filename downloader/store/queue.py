"""Downloads from queue to lease to outcome: enqueue, claim, renew, finish, drop or set aside
a claim, and give back what crashed processes held (expired leases, orphans of the original).

`QueueMixin` is the blocking side (workers, notifiers, the CLI), `AsyncQueueMixin` the API's
enqueue, which may wait for replicas. Both draw job ids through `IdDraws` and build each
ENQUEUE with `calls.enqueue_call`: one enqueue path.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis

from downloader.errors import StoreError
from downloader.jobs import hosts
from downloader.jobs.models import Aggregation, Job
from downloader.store import calls, keys
from downloader.store.base import AsyncStoreBase, StoreBase, pairs, translated
from downloader.store.idempotency import Enqueued, Idempotency, IdempotencyConflict
from downloader.store.records import (
    Claim,
    ClaimedJob,
    DeadLetter,
    NextStep,
    Outcome,
    Recovered,
    new_call_id,
    new_job_id,
    new_token,
)

log = logging.getLogger("downloader.store")

#: How many ids a new job may draw before the store gives up (a collision of 80 random bits).
ID_ATTEMPTS = 3
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


class NotReplicated(StoreError):
    """Fewer replicas than `wait_replicas` acknowledged a new job in time: it was undone, so
    nothing is queued, and the client may send it again after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int = NOT_REPLICATED_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdDraws:
    """The ids of a batch of new jobs: one drawn again for each job whose id was taken, for at
    most ID_ATTEMPTS rounds. `pending` holds the jobs (by index) still without a queued id."""

    def __init__(self, count: int) -> None:
        self.ids = [new_job_id() for _ in range(count)]
        self.pending = list(range(count))
        self.replayed: set[int] = set()
        """Jobs whose idempotency key named an earlier job of the same request: `ids` holds it."""
        self.conflicts: set[int] = set()
        """Jobs whose idempotency key named a job of another request: `ids` holds that one."""

    def rounds(self) -> Iterator[list[int]]:
        """The jobs to enqueue in each round; the caller `settle`s each before the next."""
        for _ in range(ID_ATTEMPTS):
            if not self.pending:
                return
            yield self.pending

    def settle(self, created: Sequence[object]) -> None:
        """ENQUEUE's replies for `pending`, in order: 0 means the id belongs to another job (1
        queued, 2 queued by this very call before its reply was lost; {"replay"|"conflict",
        id}: the idempotency key names job `id`)."""
        for i, reply in zip(self.pending, created, strict=True):
            if isinstance(reply, list):
                outcome, self.ids[i] = str(reply[0]), str(reply[1])
                (self.replayed if outcome == "replay" else self.conflicts).add(i)
        self.pending = [i for i, ok in zip(self.pending, created, strict=True) if not ok]
        for i in self.pending:
            self.ids[i] = new_job_id()

    def result(self, i: int) -> Enqueued:
        return Enqueued(self.ids[i], replayed=i in self.replayed, conflict=i in self.conflicts)


def parse_claim(aggr_id: str, reply: list[Any]) -> Claim:
    """CLAIM_DOWNLOADS' reply (see its comment in `scripts`) as a Claim."""
    status = reply[0]
    if status == "ok":
        jobs: dict[str, ClaimedJob] = {}
        for job_id, flat, options in zip(reply[3::3], reply[4::3], reply[5::3], strict=True):
            raw = pairs(flat)
            if raw:
                raw["DownloadState"] = "InProgress"  # as the script just wrote it
            jobs[job_id] = ClaimedJob(raw, options[0])
        left = reply[2]
        return Claim(
            jobs,
            Aggregation.from_hash(aggr_id, pairs(reply[1])),
            more=left == "more",
            next_ready=float(left) if left not in ("more", "") else None,
        )
    if status == "hosts":
        return Claim(held_by_hosts=True)
    if status in ("full", "paused", "empty", "idle"):
        return Claim(
            full=status == "full",
            paused=status == "paused",
            empty=status in ("empty", "idle"),
            idle=status == "idle",
        )
    return Claim(next_ready=float(status))


class QueueMixin(StoreBase):
    def enqueue_many(self, jobs: Sequence[tuple[Job, Aggregation]], now: float | None = None) -> list[str]:
        """Queue jobs, pipelined in one round trip (and one more per id collision); their ids in
        order."""
        return [result.id for result in self.enqueue_keyed(jobs, [None] * len(jobs), now)]

    def enqueue_keyed(
        self,
        jobs: Sequence[tuple[Job, Aggregation]],
        idempotency: Sequence[Idempotency | None],
        now: float | None = None,
    ) -> list[Enqueued]:
        """`enqueue_many` with an idempotency key per job (or None): a key that names an earlier
        job answers that job (`replayed`), or, when it was another request's, `conflict`."""
        now = time.time() if now is None else now
        draws = IdDraws(len(jobs))
        with translated():
            for pending in draws.rounds():
                pipe = self.redis.pipeline(transaction=False)
                for i in pending:
                    job, aggregation = jobs[i]
                    call = calls.enqueue_call(
                        job=job,
                        aggregation=aggregation,
                        job_id=draws.ids[i],
                        now=now,
                        idempotency=idempotency[i],
                    )
                    self.run_script(call, client=pipe)
                draws.settle(pipe.execute())
        if draws.pending:
            job = jobs[draws.pending[0]][0]
            raise StoreError(f"Could not find unique ID after {ID_ATTEMPTS} tries for {job.job_string()}")
        return [draws.result(i) for i in range(len(jobs))]

    def claim(
        self,
        aggr_id: str,
        wanted: int,
        token: str,
        lease_seconds: float,
        now: float | None = None,
        host_policy: hosts.HostPolicy = hosts.UNLIMITED,
    ) -> Claim:
        """Claim up to `wanted` jobs due by `now` whose hosts admit them (`host_policy`, pauses),
        mark them InProgress and read them, in one round trip; their leases (and host slots)
        run `lease_seconds` on Redis's clock."""
        now = time.time() if now is None else now
        call = calls.claim_call(
            aggr_id=aggr_id,
            wanted=wanted,
            token=token,
            call_id=new_call_id(),
            lease_seconds=lease_seconds,
            now=now,
            meta_ttl=self.meta_ttl,
            host_policy=host_policy,
        )
        with translated():
            reply = cast(list[Any], self.run_script(call))
        return parse_claim(aggr_id, reply)

    def renew(self, aggr_id: str, ids: Sequence[str], token: str, lease_seconds: float) -> list[str]:
        """Extend our leases by `lease_seconds` from now on Redis's clock; returns the ids whose
        lease we no longer hold."""
        if not ids:
            return []
        call = calls.renew_call(aggr_id=aggr_id, ids=ids, token=token, lease_seconds=lease_seconds)
        with translated():
            return cast(list[str], self.run_script(call))

    def finish(self, job: Job, token: str, outcome: Outcome, now: float | None = None) -> int:
        """Write the outcome of an attempt if `token` still holds the job's lease: 1 done,
        0 lease lost, -1 the job's hash vanished meanwhile."""
        now = time.time() if now is None else now
        call = calls.finish_call(
            job=job, token=token, call_id=new_call_id(), outcome=outcome, now=now, meta_ttl=self.meta_ttl
        )
        with translated():
            done = int(self.run_script(call))
            if done == 1 and outcome.next_step == NextStep.DELETE:  # its end: no callback follows
                self.run_script(calls.count_job_latency_call(job_id=job.id, aggr_id=job.aggr_id, now=now))
        return done

    def drop_claim(self, aggr_id: str, job_id: str, token: str) -> bool:
        """Forget a claimed id whose job hash is gone (nothing to run); False: lease lost."""
        call = calls.drop_claim_call(aggr_id=aggr_id, job_id=job_id, token=token)
        with translated():
            return bool(self.run_script(call))

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
        call = calls.drop_claim_call(
            aggr_id=aggr_id, job_id=job_id, token=token, dead_letter=letter, failure=failure
        )
        with translated():
            return bool(self.run_script(call))

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
        call = calls.recover_due_call(
            now=now,
            crash_tolerance=crash_tolerance,
            error=error,
            meta_ttl=self.meta_ttl,
            max_aggregations=max_aggregations,
            max_leases=max_leases,
        )
        with translated():
            reply = cast(list[Any], self.run_script(call))
        *flat, callbacks, next_due = reply
        downloads = [
            (str(a), str(j), int(r)) for a, j, r in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        ]
        return Recovered(downloads, int(callbacks), float(next_due) if next_due else None)

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
                self.run_script(calls.rescue_orphan_call(job_id=job_id, aggr_id=aggr, now=now), client=rescue)
        for kind in rescue.execute():
            if kind:
                found[str(kind)] += 1


class AsyncQueueMixin(AsyncStoreBase):
    wait_replicas: int
    wait_timeout_ms: int

    async def enqueue(
        self,
        job: Job,
        aggregation: Aggregation,
        idempotency: Idempotency | None = None,
        now: float | None = None,
    ) -> Enqueued | None:
        """The new job, or None after ID_ATTEMPTS collisions (astronomically unlikely). With a
        client's idempotency key, a key that names an earlier job of the same request answers
        that job (`replayed`, nothing queued); IdempotencyConflict when it names another
        request's. NotReplicated: too few replicas acknowledged it in time, and it was undone."""
        now = time.time() if now is None else now
        draws = IdDraws(1)
        with translated():
            for _ in draws.rounds():
                draws.settle([await self._enqueue_durably(job, aggregation, draws.ids[0], now, idempotency)])
        if draws.pending:
            return None
        if draws.conflicts:
            assert idempotency is not None  # only a key's record conflicts
            raise IdempotencyConflict(idempotency.key, draws.ids[0], idempotency.window_seconds)
        return draws.result(0)

    async def _enqueue_durably(
        self, job: Job, aggregation: Aggregation, job_id: str, now: float, idempotency: Idempotency | None
    ) -> object:
        """Run the enqueue script; its reply (0: the id is taken). With `wait_replicas`, the job
        is held (no worker can start it) while WAIT, on the same connection, counts the replicas
        that hold it: enough, and it is released into its queue; too few, and it is undone (with
        its key's record) and NotReplicated raised, so a 201 always means a failover cannot lose
        the job and a 503 that nothing was queued (a client that sends the job again makes one
        job, not two)."""
        if not self.wait_replicas:
            call = calls.enqueue_call(
                job=job, aggregation=aggregation, job_id=job_id, now=now, idempotency=idempotency
            )
            return await self.run_script(call)
        held_until = now + HOLD_SECONDS
        call = calls.enqueue_call(
            job=job,
            aggregation=aggregation,
            job_id=job_id,
            now=now,
            held_until=held_until,
            idempotency=idempotency,
        )
        pipe = self.redis.pipeline(transaction=False)
        await self.run_script(call, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        created, acked = await pipe.execute()
        if not created or isinstance(created, list):
            return created  # the id is taken, or the key names an earlier job: nothing held
        if int(acked) >= self.wait_replicas:
            release = calls.release_held_call(job_id=job_id, aggr_id=aggregation.id, score=now)
            try:
                await self.run_script(release)
            except redis.RedisError as exc:  # the job is safe with the replicas: it starts late
                log.warning(
                    "job %s is queued but could not be released (%s): it starts within %d s",
                    job_id,
                    exc,
                    HOLD_SECONDS,
                )
            return True
        undo = calls.undo_held_call(
            job_id=job_id, aggr_id=aggregation.id, held_until=held_until, idempotency=idempotency
        )
        if not await self.run_script(undo):
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
