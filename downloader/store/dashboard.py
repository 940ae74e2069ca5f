"""What the dashboard, /stats and GET /jobs/<id> read, and what processes write for them:
heartbeats of the running instances, per-process stats, per-minute attempt counts, recent
failures, and one job's whole status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TypeVar, cast

import redis
import redis.asyncio

from downloader.errors import CorruptJobError
from downloader.jobs.models import Job
from downloader.store import keys
from downloader.store.base import AsyncStoreBase, StoreBase, translated
from downloader.store.records import ATTEMPT_KINDS, DeadLetter, HostLoad, Instance, JobStatus

_Pipeline = TypeVar("_Pipeline", redis.client.Pipeline, redis.asyncio.client.Pipeline)


class KeyTTLs:
    """When each instances key's TTL is next due to be set again (INSTANCE_KEY_TTL_SECONDS,
    every half of it): a beat is then one ZADD, not two commands."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        if now < self._due.get(key, float("-inf")):
            return False
        self._due[key] = now + keys.INSTANCE_KEY_TTL_SECONDS / 2
        return True


def _heartbeat(pipe: _Pipeline, instance: Instance, now: float | None, ttls: KeyTTLs) -> _Pipeline:
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


def _delivered(job_id: str, meta: dict[str, str], errors: list[str], options: str | None) -> JobStatus:
    """A delivered job, from what CALLBACK_DELIVERED kept of its hash until its file goes."""
    try:
        kept = json.loads(meta["Delivered"])
        delivered_at = float(meta.get("DeliveredAt", ""))
    except ValueError as exc:
        raise CorruptJobError(f"job {job_id}: unreadable delivery record: {exc}") from exc
    if not isinstance(kept, dict):
        raise CorruptJobError(f"job {job_id}: unreadable delivery record {meta['Delivered']!r}")
    job = Job.from_hash({str(k): str(v) for k, v in kept.items()}, options)
    return JobStatus(job, meta, errors, queued_at=None, lease_expires_at=None, delivered_at=delivered_at)


class DashboardMixin(StoreBase):
    _key_ttls: KeyTTLs
    _stats_written: dict[str, tuple[str, float]]

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

    def heartbeat(self, instance: Instance, now: float | None = None) -> None:
        with translated():
            added = _heartbeat(
                self.redis.pipeline(transaction=False), instance, now, self._key_ttls
            ).execute()[0]
            if added:
                _prune_instances(self.redis.pipeline(transaction=False), instance.role, now).execute()

    def remember_limit(self, aggr_id: str, limit: int, now: float | None = None) -> None:
        """The limit of an aggregation whose idle hash was just deleted, kept in this minute's
        counts: the dashboard shows it while the aggregation's recent work does."""
        minute = keys.throughput(int((time.time() if now is None else now) // 60))
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(minute, f"{aggr_id}:{keys.THROUGHPUT_LIMIT_KIND}", str(limit))
            pipe.expire(minute, keys.THROUGHPUT_TTL_SECONDS)
            pipe.execute()

    def count_callback_failure(self, host: str, *, final: bool, now: float | None = None) -> None:
        """One failed callback attempt to `host` (`final`: failed for good), per minute."""
        minute = keys.callback_hosts(int((time.time() if now is None else now) // 60))
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hincrby(minute, f"{host}:{'failed' if final else 'retried'}", 1)
            pipe.expire(minute, keys.THROUGHPUT_TTL_SECONDS)
            pipe.execute()


class AsyncDashboardMixin(AsyncStoreBase):
    _key_ttls: KeyTTLs

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

    async def stats(self, component: str) -> str | None:
        with translated():
            return cast(str | None, await self.redis.get(keys.stats(component)))

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

    async def host_loads(self, most: int = 50, now: float | None = None) -> list[HostLoad]:
        """The `most` hosts claimed for or paused most recently (`keys.HOSTS`), busiest first."""
        now = time.time() if now is None else now
        with translated():
            hosts = cast(list[str], await self.redis.zrevrange(keys.HOSTS, 0, most - 1))
            pipe = self.redis.pipeline(transaction=False)
            for host in hosts:
                pipe.zcount(keys.host_inflight(host), repr(now), "+inf")  # expired leases count no more
                pipe.get(keys.host_pause(host))
            replies = await pipe.execute()
        loads = [
            HostLoad(host, int(count), float(until) if until else None)
            for host, count, until in zip(hosts, replies[::2], replies[1::2], strict=True)
        ]
        return sorted(loads, key=lambda load: (-load.in_flight, -(load.paused_until or 0), load.host))

    async def callbacks_queued(self) -> int:
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(keys.CALLBACK_QUEUE)
            pipe.zcard(keys.CALLBACK_INFLIGHT)
            queued, delivering = await pipe.execute()
        return int(queued) + int(delivering)

    async def per_minute(
        self, prefix: str, minutes: Sequence[int], fields: Sequence[str] | None = None
    ) -> dict[int, dict[str, int]]:
        """The counts of the `<prefix><minute>` hashes: every field, or only `fields` (absent
        ones left out). ValueError for a count that is not a number."""
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            for minute in minutes:
                if fields is None:
                    pipe.hgetall(f"{prefix}{minute}")
                elif fields:
                    pipe.hmget(f"{prefix}{minute}", list(fields))
            replies = await pipe.execute() if fields is None or fields else [[] for _ in minutes]
        out: dict[int, dict[str, int]] = {}
        for minute, reply in zip(minutes, replies, strict=True):
            pairs = reply.items() if isinstance(reply, dict) else zip(fields or (), reply, strict=True)
            out[minute] = {field: int(value) for field, value in pairs if value is not None}
        return out

    async def callback_destinations(self, sample: int = keys.CALLBACK_HOSTS_SAMPLE) -> list[tuple[str, str]]:
        """(callback type, destination) of up to `sample` queued or in-flight callbacks, the
        earliest due first; jobs gone meanwhile are left out."""
        with translated():
            ids = cast(list[str], await self.redis.zrange(keys.CALLBACK_INFLIGHT, 0, sample - 1))
            if len(ids) < sample:  # (a stop of -1 would read the whole queue)
                ids += cast(list[str], await self.redis.zrange(keys.CALLBACK_QUEUE, 0, sample - 1 - len(ids)))
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), ["CallbackURL", "CallbackType", "CallbackDst"])
            rows = await pipe.execute() if ids else []
        return [("http", url) if url else (kind or "", dst or "") for url, kind, dst in rows if url or dst]

    async def operator_in_use(self) -> bool:
        """Whether an operator manages any aggregation (it lists them in ManagedAggregations)."""
        with translated():
            return bool(await self.redis.scard(keys.MANAGED_AGGREGATIONS))

    async def job_hash(self, job_id: str) -> dict[str, str]:
        with translated():
            return cast(dict[str, str], await self.redis.hgetall(keys.job(job_id)))

    async def job_status(self, job_id: str) -> JobStatus | None:
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.job(job_id))
            pipe.hgetall(keys.job_meta(job_id))
            pipe.lrange(keys.job_errors(job_id), 0, -1)
            pipe.get(keys.job_options(job_id))
            pipe.hget(keys.DEAD_LETTERS, job_id)
            raw, meta, errors, options, dead = await pipe.execute()
            if not raw and meta.get("Delivered"):
                return _delivered(job_id, meta, errors, options)
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
            pipe.zscore(keys.CALLBACK_QUEUE, job_id)
            queued_at, lease, callback_due = await pipe.execute()
        return JobStatus(
            job=job,
            meta=meta,
            errors=errors,
            queued_at=queued_at,
            lease_expires_at=lease,
            callback_due_at=callback_due,
        )
