"""Small timing and process helpers shared by the worker and the notifier loops."""

from __future__ import annotations

import time


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
