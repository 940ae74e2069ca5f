"""What the dashboard, /stats and GET /jobs/<id> read, and what processes write for them:
heartbeats of the running instances, per-process stats, per-minute attempt counts, recent
failures, and one job's whole status.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar, cast

import redis
import redis.asyncio

from downloader.jobs.models import Job
from downloader.store import keys
from downloader.store.base import AsyncStoreBase, StoreBase, translated
from downloader.store.records import ATTEMPT_KINDS, DeadLetter, Instance, JobStatus

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

    async def callbacks_queued(self) -> int:
        with translated():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(keys.CALLBACK_QUEUE)
            pipe.zcard(keys.CALLBACK_INFLIGHT)
            queued, delivering = await pipe.execute()
        return int(queued) + int(delivering)

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
