"""`Store` and `AsyncStore`, composed from the per-concern mixins: how a process connects.

`Store` (blocking, one instance shared by all threads) serves workers, notifiers, the
operator and the CLI; `AsyncStore` (redis.asyncio) serves the API.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import redis
import redis.asyncio

from downloader.store import keys, redis_client
from downloader.store.aggregations import AggregationsMixin, AsyncAggregationsMixin
from downloader.store.base import translated
from downloader.store.callbacks import AsyncCallbacksMixin, CallbacksMixin
from downloader.store.dashboard import AsyncDashboardMixin, DashboardMixin, KeyTTLs
from downloader.store.deletions import DeletionsMixin
from downloader.store.queue import AsyncQueueMixin, QueueMixin
from downloader.store.wakeups import WakeupsMixin

if TYPE_CHECKING:
    from downloader.config.settings import Settings


class Store(QueueMixin, CallbacksMixin, DeletionsMixin, AggregationsMixin, DashboardMixin, WakeupsMixin):
    """Blocking access for workers and notifiers (one instance shared by all threads)."""

    def __init__(self, client: redis.Redis, *, meta_ttl: int = keys.JOB_META_TTL_SECONDS) -> None:
        super().__init__(client, meta_ttl=meta_ttl)
        self._key_ttls = KeyTTLs()
        self._stats_written = {}

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


class AsyncStore(AsyncQueueMixin, AsyncCallbacksMixin, AsyncAggregationsMixin, AsyncDashboardMixin):
    """What the API needs, on redis.asyncio."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        meta_ttl: int = keys.JOB_META_TTL_SECONDS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(client, meta_ttl=meta_ttl)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._key_ttls = KeyTTLs()
        self._follower: asyncio.Task[None] | None = None

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
