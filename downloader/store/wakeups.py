"""Listening for the announcements that wake idle workers and notifiers: a job queued in an
empty queue (`keys.WAKEUP_CHANNEL`), a callback due (`keys.CALLBACK_WAKEUP_CHANNEL`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import redis

from downloader.errors import StoreError
from downloader.store import keys
from downloader.store.base import StoreBase

log = logging.getLogger("downloader.store")

#: Backoff of the wakeup listener between failed subscriptions (seconds).
RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX = 0.5, 10.0


class WakeupsMixin(StoreBase):
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
