"""One keyword-only wrapper per Lua script of `scripts`: the only way the product runs one.

Each builds a `ScriptCall` whose KEYS and ARGV are in the order the script names them at its
top, so no caller can pass too few arguments or swap two (tests/unit/test_script_calls.py
checks that the counts match). The blocking and the asyncio stores share them; every call
that must recognise its own retry carries an id of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from downloader.jobs import hosts
from downloader.jobs.models import DEFAULT_AGGREGATION_LIMIT, DEFAULT_MAX_RETRIES, Aggregation, Job
from downloader.store import keys, scripts
from downloader.store.idempotency import Idempotency, fingerprint
from downloader.store.records import DeadLetter, NextStep, Outcome


class ScriptCall(NamedTuple):
    """One run of `script` (its Lua text, which names it) with these KEYS and ARGV."""

    script: str
    keys: list[str]
    args: list[Any]
    job_id: str = ""


def flatten(mapping: Mapping[str, str]) -> list[str]:
    """A hash as the field/value pairs a script takes after its named ARGV."""
    out: list[str] = []
    for field, value in mapping.items():
        out += [field, value]
    return out


# --- queue and leases ---------------------------------------------------------------

#: How many due jobs past the ones it wants a claim looks at when their hosts hold the first
#: ones back (paused, full, rate-limited): other hosts' jobs of the aggregation keep running
#: behind a blocked host, and a claim's cost stays bounded however long the queue.
HOST_SCAN = 100


def enqueue_call(
    *,
    job: Job,
    aggregation: Aggregation,
    job_id: str,
    now: float,
    held_until: float | None = None,
    idempotency: Idempotency | None = None,
) -> ScriptCall:
    """ENQUEUE of `job` under `job_id`, queued at `now`; or, `held_until` given, queued at that
    score and not announced until RELEASE_HELD (see `queue.HOLD_SECONDS`). With `idempotency`,
    the key's earlier job is answered instead, or the new job recorded under the key."""
    fields = dataclasses.replace(job, id=job_id).to_hash()
    return ScriptCall(
        scripts.ENQUEUE,
        keys=[
            keys.job(job_id),
            keys.aggregation(aggregation.id),
            keys.queue(aggregation.id),
            keys.job_options(job_id),
            keys.AGGREGATIONS,
            keys.DELETION_QUEUE,
            _idempotency_key(idempotency),
        ],
        args=[
            repr(now if held_until is None else held_until),
            aggregation.limit,
            aggregation.proxy,
            aggregation.id,
            job_id,
            keys.WAKEUP_CHANNEL if held_until is None else "",
            job.options.encode(),
            "" if idempotency is None else fingerprint(job, aggregation),
            0 if idempotency is None else idempotency.window_seconds,
            *flatten(fields),
        ],
        job_id=job_id,
    )


def release_held_call(*, job_id: str, aggr_id: str, score: float) -> ScriptCall:
    return ScriptCall(
        scripts.RELEASE_HELD,
        keys=[keys.queue(aggr_id)],
        args=[job_id, repr(score), keys.WAKEUP_CHANNEL, aggr_id],
    )


def undo_held_call(
    *, job_id: str, aggr_id: str, held_until: float, idempotency: Idempotency | None = None
) -> ScriptCall:
    return ScriptCall(
        scripts.UNDO_HELD,
        keys=[keys.job(job_id), keys.queue(aggr_id), keys.job_options(job_id), _idempotency_key(idempotency)],
        args=[job_id, repr(held_until)],
    )


def _idempotency_key(idempotency: Idempotency | None) -> str:
    """The key's record, "" without one (the scripts then neither read nor write it)."""
    return "" if idempotency is None else keys.idempotency(idempotency.scope, idempotency.key)


def claim_call(
    *,
    aggr_id: str,
    wanted: int,
    token: str,
    call_id: str,
    lease_seconds: float,
    now: float,
    meta_ttl: int,
    host_policy: hosts.HostPolicy = hosts.UNLIMITED,
) -> ScriptCall:
    return ScriptCall(
        scripts.CLAIM_DOWNLOADS,
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
            keys.HOSTS,
            keys.HOST_PAUSES,
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
            host_policy.encoded,
            HOST_SCAN,
            keys.HOST_INFLIGHT_PREFIX,
            keys.HOST_PAUSE_PREFIX,
            keys.HOST_NEXT_PREFIX,
            keys.HOSTS_SEEN_SECONDS,
        ],
    )


def renew_call(*, aggr_id: str | None, ids: Sequence[str], token: str, lease_seconds: float) -> ScriptCall:
    """RENEW of the download leases of `aggr_id` and their host slots, or of the callback
    leases (which hold none) when it is None."""
    inflight, leases, host_prefix = (
        (keys.CALLBACK_INFLIGHT, keys.CALLBACK_LEASES, "")
        if aggr_id is None
        else (keys.inflight(aggr_id), keys.leases(aggr_id), keys.HOST_INFLIGHT_PREFIX)
    )
    return ScriptCall(
        scripts.RENEW,
        keys=[inflight, leases],
        args=[repr(lease_seconds), token, host_prefix, *ids],
    )


def finish_call(
    *, job: Job, token: str, call_id: str, outcome: Outcome, now: float, meta_ttl: int
) -> ScriptCall:
    """FINISH of `outcome`: the job goes to the queue of its next step, announced on that
    queue's channel (the deletion queue has none: the reaper polls); with `outcome.pause_host`
    the job's host is paused fleet-wide for that many seconds."""
    host = hosts.host_of(job.url) if outcome.pause_host else ""  # named only to be paused
    target, channel = {
        None: (keys.queue(job.aggr_id), keys.WAKEUP_CHANNEL),  # not queued: no score
        NextStep.RETRY: (keys.queue(job.aggr_id), keys.WAKEUP_CHANNEL),
        NextStep.CALLBACK: (keys.CALLBACK_QUEUE, keys.CALLBACK_WAKEUP_CHANNEL),
        NextStep.DELETE: (keys.DELETION_QUEUE, ""),
    }[outcome.next_step]
    return ScriptCall(
        scripts.FINISH,
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
            keys.HOSTS,
            keys.host_pause(host),
            keys.HOST_PAUSES,
        ],
        args=[
            job.id,
            token,
            call_id,
            "" if outcome.next_step is None else repr(outcome.due),
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
            channel,
            keys.HOST_INFLIGHT_PREFIX,
            host,
            repr(outcome.pause_host if host else 0.0),
            *flatten(outcome.fields),
        ],
    )


def drop_claim_call(
    *, aggr_id: str, job_id: str, token: str, dead_letter: DeadLetter | None = None, failure: str = ""
) -> ScriptCall:
    return ScriptCall(
        scripts.DROP_CLAIM,
        keys=[
            keys.inflight(aggr_id),
            keys.leases(aggr_id),
            keys.DEAD_LETTERS,
            keys.RECENT_FAILURES,
        ],
        args=[
            job_id,
            token,
            "" if dead_letter is None else dead_letter.encode(),
            failure,
            keys.RECENT_FAILURES_KEPT,
            keys.HOST_INFLIGHT_PREFIX,
        ],
    )


def recover_due_call(
    *, now: float, crash_tolerance: int, error: str, meta_ttl: int, max_aggregations: int, max_leases: int
) -> ScriptCall:
    return ScriptCall(
        scripts.RECOVER_DUE,
        keys=[
            keys.LEASES_DUE,
            keys.CALLBACK_QUEUE,
            keys.CALLBACK_INFLIGHT,
            keys.CALLBACK_LEASES,
        ],
        args=[
            repr(now),
            crash_tolerance,
            DEFAULT_MAX_RETRIES,
            error,
            meta_ttl,
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
            keys.HOST_INFLIGHT_PREFIX,
        ],
    )


def rescue_orphan_call(*, job_id: str, aggr_id: str, now: float) -> ScriptCall:
    return ScriptCall(
        scripts.RESCUE_ORPHAN,
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


# --- callbacks ----------------------------------------------------------------------


def claim_callbacks_call(*, wanted: int, token: str, lease_seconds: float, now: float) -> ScriptCall:
    return ScriptCall(
        scripts.CLAIM_CALLBACKS,
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
    )


def count_job_latency_call(*, job_id: str, aggr_id: str, now: float) -> ScriptCall:
    return ScriptCall(
        scripts.COUNT_JOB_LATENCY,
        keys=[keys.job_meta(job_id), keys.latency(int(now // 60))],
        args=[aggr_id, repr(now), keys.LATENCY_TTL_SECONDS],
    )


def callback_delivered_call(
    *, job_id: str, token: str, delete_at: float, location: str, now: float, kept_ttl: int
) -> ScriptCall:
    """`kept_ttl`: seconds the delivered job's record outlives `now` if the reaper never comes."""
    return ScriptCall(
        scripts.CALLBACK_DELIVERED,
        keys=[
            keys.CALLBACK_INFLIGHT,
            keys.CALLBACK_LEASES,
            keys.job(job_id),
            keys.job_meta(job_id),
            keys.job_errors(job_id),
            keys.DELETION_QUEUE,
            keys.job_options(job_id),
            keys.DELETION_TARGETS,
            keys.latency(int(now // 60)),
        ],
        args=[job_id, token, repr(delete_at), location, repr(now), kept_ttl, keys.LATENCY_TTL_SECONDS],
    )


def callback_undelivered_call(
    *,
    job_id: str,
    token: str,
    fields: Mapping[str, str],
    retry_at: float | None,
    now: float,
    meta_ttl: int,
    delete_at: float | None,
    location: str,
) -> ScriptCall:
    return ScriptCall(
        scripts.CALLBACK_UNDELIVERED,
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
            *flatten(fields),
        ],
    )


def retry_callback_call(*, job_id: str, now: float) -> ScriptCall:
    return ScriptCall(
        scripts.RETRY_CALLBACK,
        keys=[keys.job(job_id), keys.CALLBACK_QUEUE, keys.DELETION_QUEUE, keys.DELETION_TARGETS],
        args=[job_id, repr(now), keys.CALLBACK_WAKEUP_CHANNEL],
    )


# --- deletions ----------------------------------------------------------------------


def claim_deletions_call(*, wanted: int, now: float, retry_at: float) -> ScriptCall:
    return ScriptCall(
        scripts.CLAIM_DELETIONS, keys=[keys.DELETION_QUEUE], args=[repr(now), wanted, repr(retry_at)]
    )
