"""This process on the dashboard's list of instances (`instances:<role>`), renewed every
INSTANCE_HEARTBEAT_SECONDS: one helper for the API, the operator, the worker and the notifier,
whether they beat from a housekeeping loop of their own (`due`, then `beat`) or from a task
(`forever`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from downloader.errors import StoreError
from downloader.pacing import Every
from downloader.store import AsyncStore, Instance, Store, keys

log = logging.getLogger("downloader.heartbeat")


class Heartbeat:
    """Beats for one process (`instance`) on its store, blocking or asyncio."""

    def __init__(
        self, db: Store | AsyncStore, instance: Instance, interval: float = keys.INSTANCE_HEARTBEAT_SECONDS
    ) -> None:
        self.instance = instance
        self.interval = interval
        self._db = db
        self._pace = Every(interval, first_now=True)  # listed as soon as it runs

    def due(self) -> bool:
        """True once per interval, for a loop that runs `beat` when it is."""
        return self._pace.due()

    def beat(self) -> None:
        """One beat, on a synchronous store; a Redis error is the caller's to log."""
        if isinstance(self._db, AsyncStore):
            raise TypeError("a heartbeat on an asynchronous store beats from forever()")
        self._db.heartbeat(self.instance)

    async def forever(self, stopping: asyncio.Event) -> None:
        """Beat until `stopping` is set. Stopped between beats, never cancelled inside one:
        redis-py's asyncio pipelines do not survive a cancellation mid-command (the API's
        shutdown then hung on closing Redis, about one run in three of the API tests)."""
        while not stopping.is_set():
            try:
                if isinstance(self._db, AsyncStore):
                    await self._db.heartbeat(self.instance)
                else:  # a synchronous store blocks: off the event loop
                    await asyncio.to_thread(self._db.heartbeat, self.instance)
            except StoreError as exc:
                log.warning("heartbeat failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
