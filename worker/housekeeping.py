"""Timing helpers and the fleet-wide chores shared by the worker and the notifier loops:
lease recovery (a pass over what is due, never over the keyspace, in one place for both) and
the rare, paced adoption sweep for queues no registry knows of."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from downloader.config.settings import Settings
from downloader.errors import DownloaderError, StoreError
from downloader.observability import metrics
from downloader.pacing import Every
from downloader.store import Store

log = logging.getLogger("downloader.housekeeping")

LOST_LEASE_TEXT = (
    "Error while downloading file, the worker holding the job was lost (killed or stalled "
    "past its lease) too many times, retriable: true, internal: true"
)


def loop_until(stopping: threading.Event, step: Callable[[], None], log: logging.Logger) -> None:
    """Run `step` until `stopping`; a Redis outage pauses the loop instead of ending it."""
    while not stopping.is_set():
        try:
            step()
        except StoreError as exc:
            log.warning("redis unavailable, retrying: %s", exc)
            stopping.wait(1.0)


#: A housekeeping step: when it is due, and what it does (named in the log when it fails, by
#: its qualified name, e.g. `Heartbeat.beat`).
Step = tuple[Callable[[], bool], Callable[[], None]]


def run_due(steps: Iterable[Step], log: logging.Logger) -> None:
    """Run the steps that are due; one failing against Redis is logged and the rest still run."""
    for due, step in steps:
        if due():
            try:
                step()
            except DownloaderError as exc:
                log.warning("%s failed: %s", step.__qualname__, exc)


class LeaseRecovery:
    """The fleet's lease recovery as a housekeeping step, the same in the worker and the
    notifier (any process may run it): due when the last pass scheduled it (see
    `recover_expired_leases`); `on_recovered` runs when a pass gave something back, to wake
    the loop that serves it."""

    def __init__(self, db: Store, settings: Settings, on_recovered: Callable[[], None]) -> None:
        self._db = db
        self._settings = settings
        self._on_recovered = on_recovered
        self.schedule = Every(settings.recovery_every, first_now=True)

    def due(self) -> bool:
        return self.schedule.due()

    def recover_expired_leases(self) -> None:
        if recover_expired_leases(self._db, self._settings, self.schedule):
            self._on_recovered()


def recover_expired_leases(db: Store, settings: Settings, every: Every) -> int:
    """Give back the jobs and callbacks whose leases expired on Redis's clock (their process
    died or hung); any process may run it, as often as it likes. Returns how many.

    `every` is rescheduled for when the next lease held falls due, no sooner than the
    recovery interval and no later than the scan interval or a lease (one that a process
    takes meanwhile falls due a lease from now): an idle fleet recovers nothing every 30 s
    instead of every 10, a crashed process's leases are recovered as soon as they expire."""
    done = db.recover_due(crash_tolerance=settings.crash_tolerance, error=LOST_LEASE_TEXT)
    latest = min(settings.scan_interval_seconds, settings.lease_seconds)
    wait = latest if done.next_due_in is None else min(done.next_due_in, latest)
    every.next_in(max(settings.recovery_every, wait))
    metrics.LEASE_RECOVERIES.labels("callback", "requeued").inc(done.callbacks)
    for aggr_id, job_id, result in done.downloads:
        fields = {"event": "lease_recovered", "job_id": job_id, "aggr_id": aggr_id}
        metrics.lease_recovered("download", result)
        if result == 1:
            log.warning("job %s of %s: its worker was lost; queued again", job_id, aggr_id, extra=fields)
        elif result == 2:
            log.warning("job %s of %s: lost its worker too often; failed", job_id, aggr_id, extra=fields)
    return len(done.downloads) + done.callbacks


def adopt_forever(
    db: Store, settings: Settings, stopping: threading.Event, on_adopted: Callable[[], None]
) -> None:
    """Every `adoption_interval_seconds`, if it is this process's turn in the fleet, register
    the queues no registry knows of (see `Store.adopt_unregistered`); `on_adopted` runs when
    some were found. Runs in a thread of its own: a paced sweep of millions of keys is slow."""
    interval = settings.adoption_interval_seconds
    if interval <= 0:
        return
    while True:
        try:
            if db.take_adoption_turn(interval) and db.adopt_unregistered():
                log.info("adopted aggregations written outside the registry")
                on_adopted()
        except DownloaderError as exc:
            log.warning("adoption sweep failed: %s", exc)
        if stopping.wait(interval):
            return
