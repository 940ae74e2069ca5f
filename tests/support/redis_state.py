"""What the tests do to Redis that no process of the service does: queue one job at a time,
recover one expired lease, list expired leases, read a dead letter, write the dashboard's
history, delete an idle aggregation's hash. Built on `Store` and the product's Lua functions
(`scripts.*_FUNCTION`), so each behaves as the product's own path; its scripts name their
KEYS and ARGV at their top and are built by one keyword-only wrapper each, as the product's.
"""

from __future__ import annotations

import time
from typing import cast

from downloader.jobs.models import DEFAULT_MAX_RETRIES, Aggregation, Job
from downloader.store import DeadLetter, ScriptCall, Store, keys, scripts

#: One job's lease recovery, as RECOVER_DUE does it for every due lease.
RECOVER = (
    scripts.RECOVER_JOB_FUNCTION
    + """
local inflight, leases, queue, job, jobmeta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local callback_queue, joberrors = KEYS[6], KEYS[7]
local id, now, tolerance, default_max_retries, error_text = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local meta_ttl, errors_kept, aggr_id, wakeup_channel, callback_channel = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local k = {inflight = inflight, leases = leases, queue = queue, job = job, jobmeta = jobmeta,
           callback_queue = callback_queue, joberrors = joberrors}
local a = {id = id, now = now, tolerance = tolerance, default_max_retries = default_max_retries,
           error = error_text, meta_ttl = meta_ttl, errors_kept = errors_kept, aggr_id = aggr_id,
           wakeup_channel = wakeup_channel, callback_channel = callback_channel}
return recover_job(k, a)
"""
)

#: What FINISH counts for the dashboard, on its own: 1.
RECORD_ATTEMPT = (
    scripts.COUNT_ATTEMPT_FUNCTION
    + """
local minute, failures = KEYS[1], KEYS[2]
local kind, aggr_id, failure, throughput_ttl, failures_kept = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
count_attempt(minute, failures, kind, aggr_id, failure, throughput_ttl, failures_kept)
return 1
"""
)

#: Deletes the hash of an aggregation with no queued and no claimed job (the original's
#: removal of idle aggregations, which the service does within CLAIM_DOWNLOADS) and takes it
#: off the registry; the hash of an aggregation the operator manages stays. 1 deleted, 0 kept.
DELETE_IDLE_AGGREGATION = """
local queue, inflight, aggr, managed, registry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local aggr_id = ARGV[1]
if redis.call('ZCARD', queue) > 0 or redis.call('ZCARD', inflight) > 0 then return 0 end
redis.call('SREM', registry, aggr_id)
if redis.call('SISMEMBER', managed, aggr_id) == 1 then return 0 end
return redis.call('DEL', aggr)
"""


def recover_call(
    *, aggr_id: str, job_id: str, now: float, crash_tolerance: int, error: str, meta_ttl: int
) -> ScriptCall:
    return ScriptCall(
        RECOVER,
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
            meta_ttl,
            keys.JOB_ERRORS_KEPT,
            aggr_id,
            keys.WAKEUP_CHANNEL,
            keys.CALLBACK_WAKEUP_CHANNEL,
        ],
    )


def record_attempt_call(*, aggr_id: str, kind: str, failure: str, now: float) -> ScriptCall:
    return ScriptCall(
        RECORD_ATTEMPT,
        keys=[keys.throughput(int(now // 60)), keys.RECENT_FAILURES],
        args=[kind, aggr_id, failure, keys.THROUGHPUT_TTL_SECONDS, keys.RECENT_FAILURES_KEPT],
    )


def delete_idle_aggregation_call(*, aggr_id: str) -> ScriptCall:
    return ScriptCall(
        DELETE_IDLE_AGGREGATION,
        keys=[
            keys.queue(aggr_id),
            keys.inflight(aggr_id),
            keys.aggregation(aggr_id),
            keys.MANAGED_AGGREGATIONS,
            keys.AGGREGATIONS,
        ],
        args=[aggr_id],
    )


def enqueue(db: Store, job: Job, aggregation: Aggregation, now: float | None = None) -> str:
    """Queue one job through the product's blocking enqueue path; its id."""
    return db.enqueue_many([(job, aggregation)], now=now)[0]


def recover(
    db: Store, aggr_id: str, job_id: str, *, crash_tolerance: int, error: str, now: float | None = None
) -> int:
    """Give back one job whose lease expired on Redis's clock: 1 requeued, 2 failed, 0 lease
    not expired (or already recovered), -1 job hash gone."""
    now = time.time() if now is None else now
    call = recover_call(
        aggr_id=aggr_id,
        job_id=job_id,
        now=now,
        crash_tolerance=crash_tolerance,
        error=error,
        meta_ttl=db.meta_ttl,
    )
    return int(db.run_script(call))


def redis_now(db: Store) -> float:
    seconds, micros = db.redis.time()
    return seconds + micros / 1_000_000


def expired_leases(db: Store, aggr_id: str) -> list[str]:
    """Leases of the aggregation past their expiry on Redis's clock."""
    return cast(
        list[str],
        db.redis.zrangebyscore(keys.inflight(aggr_id), "-inf", repr(redis_now(db)), start=0, num=500),
    )


def dead_letter(db: Store, job_id: str) -> DeadLetter | None:
    raw = cast(str | None, db.redis.hget(keys.DEAD_LETTERS, job_id))
    return None if raw is None else DeadLetter.decode(raw)


def record_attempt(db: Store, aggr_id: str, kind: str, failure: str = "", now: float | None = None) -> None:
    """Count one finished attempt (`ok`, `failed` or `retried`) in its minute, as FINISH does;
    a `failure` record (JSON) goes to the capped list of recent failures."""
    now = time.time() if now is None else now
    db.run_script(record_attempt_call(aggr_id=aggr_id, kind=kind, failure=failure, now=now))


def delete_idle_aggregation(db: Store, aggr_id: str) -> bool:
    return bool(db.run_script(delete_idle_aggregation_call(aggr_id=aggr_id)))
