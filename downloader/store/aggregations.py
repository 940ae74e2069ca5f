"""Aggregations: the registry of those with queued or claimed jobs (and the adoption of queues
it does not know), their hashes as the operator writes them, paused or not, and their
backlogs as the operator and the dashboard read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from downloader.jobs.models import Aggregation
from downloader.store import keys
from downloader.store.base import AsyncStoreBase, StoreBase, translated
from downloader.store.records import Instance, new_token


class AggregationsMixin(StoreBase):
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

    def aggregation(self, aggr_id: str) -> Aggregation:
        with translated():
            raw = cast(dict[str, str], self.redis.hgetall(keys.aggregation(aggr_id)))
        return Aggregation.from_hash(aggr_id, raw)

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
        for lease in holders:
            host = host_of.get(lease.split(" ", 1)[0])  # "token" or "token <host it holds a slot of>"
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


class AsyncAggregationsMixin(AsyncStoreBase):
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
