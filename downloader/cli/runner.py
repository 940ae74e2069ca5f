"""Running services together until a signal, or until one of them fails; then stopping all.

The one place of that logic, for `worker`, `notifier` and `up`. The first SIGTERM/SIGINT
stops every service (each drains), a second one exits at once; the first failure is the
command's one line on stderr and exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

from downloader.errors import DownloaderError

log = logging.getLogger("downloader")

#: How long the main thread blocks at once while it waits: signal handlers run between waits.
WAIT_SLICE_SECONDS = 0.5


class Service(Protocol):
    def run(self) -> None:
        """Serve until stop(), then drain; raise if the service cannot go on."""

    def stop(self) -> None:
        """Ask run() to drain and return; from any thread, any number of times."""


def run_services(
    services: Sequence[Service],
    *,
    main_thread: Service | None = None,
    drain_seconds: float | None = None,
) -> int:
    """Run each of `services` in a thread, and `main_thread` (a service that must own the
    main thread: uvicorn handles signals only there) in this one, until a signal or until
    one of them fails; then stop them all and wait for their drain (`drain_seconds` at most,
    or as long as it takes). Returns the exit status: 1 after printing the first failure."""
    group = _ServiceGroup([*services, *([main_thread] if main_thread is not None else [])])
    on_signals(group.stop_all)
    threads = [group.start_thread(service) for service in services]
    try:
        if main_thread is None:
            _join(threads, None)  # they return when a signal or a failure stops them
        else:
            group.run(main_thread)
    finally:
        group.stop_all()  # the main thread's service returned: the others follow it
        _join(threads, drain_seconds)
    return group.exit_status()


def on_signals(stop: Callable[[], object]) -> None:
    """The first SIGTERM or SIGINT calls `stop` (a drain); a second one exits at once."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            log.warning("second signal: exiting now")
            os._exit(1)
        received.append(signum)
        log.info("received %s: draining", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class _ServiceGroup:
    """Services that stop together: the failure of one records why and stops them all."""

    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.failures: list[str] = []

    def stop_all(self) -> None:
        for service in self.services:
            service.stop()

    def start_thread(self, service: Service) -> threading.Thread:
        # A daemon: a service that overruns its drain must not keep the process alive after
        # the rest.
        thread = threading.Thread(target=self.run, args=(service,), name=_name(service), daemon=True)
        thread.start()
        return thread

    def run(self, service: Service) -> None:
        try:
            service.run()
        except DownloaderError as exc:
            self.failures.append(str(exc))
        except OSError as exc:  # the machine's fault (permissions, disk): no traceback
            self.failures.append(f"{_name(service)}: {exc}")
        except Exception as exc:
            log.exception("%s failed", _name(service))
            self.failures.append(f"{_name(service)} failed: {exc}")
        else:
            return
        self.stop_all()

    def exit_status(self) -> int:
        if self.failures:
            print(f"downloader: {self.failures[0]}", file=sys.stderr)
            return 1
        return 0


def _name(service: Service) -> str:
    return type(service).__name__


def _join(threads: list[threading.Thread], seconds: float | None) -> None:
    """Wait for the threads to end: `seconds` at most (then warn of each still running), or
    for as long as they take."""
    deadline = None if seconds is None else time.monotonic() + seconds
    for thread in threads:
        while thread.is_alive():
            if deadline is None:
                thread.join(timeout=WAIT_SLICE_SECONDS)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%s did not stop within %.0f s", thread.name, seconds)
                break
            thread.join(timeout=min(left, WAIT_SLICE_SECONDS))
