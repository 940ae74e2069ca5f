"""Small timing and process helpers shared by the worker and the notifier loops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from downloader.errors import StoreError


class Every:
    """`due()` is true once per `interval` seconds (monotonic clock)."""

    def __init__(self, interval: float, *, first_now: bool = False) -> None:
        self.interval = interval
        self._next = time.monotonic() if first_now else time.monotonic() + interval

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    __call__ = due


def loop_until(stopping: threading.Event, step: Callable[[], None], log: logging.Logger) -> None:
    """Run `step` until `stopping`; a Redis outage pauses the loop instead of ending it."""
    while not stopping.is_set():
        try:
            step()
        except StoreError as exc:
            log.warning("redis unavailable, retrying: %s", exc)
            stopping.wait(1.0)
