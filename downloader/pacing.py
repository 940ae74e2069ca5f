"""Pacing of periodic steps: `Every(interval).due()` is true once per interval on the monotonic
clock, for the housekeeping loops of the worker and the notifier and for heartbeats."""

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

    def next_in(self, seconds: float) -> None:
        """The next time is `seconds` from now instead."""
        self._next = time.monotonic() + seconds

    def due_in(self) -> float:
        """Seconds until the next time (negative once it has passed)."""
        return self._next - time.monotonic()

    __call__ = due
