"""The notifier: delivers callbacks, retries them, deletes delivered jobs' files, recovers leases.

Callbacks are claimed from `CallbackQueue` under a lease like downloads, so a notifier that
dies mid-delivery loses nothing (delivery is at least once). An idle notifier waits for the
queue's pub/sub announcement or its next due retry, never polling. The housekeeping thread
also runs the fleet's lease recovery and the file reaper (woken when a deletion is due).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from downloader import store
from downloader.config.settings import Settings
from downloader.delivery import notifying, signing
from downloader.delivery.storage import Location, Storages, location_of
from downloader.errors import (
    DestinationNotAllowed,
    DownloaderError,
    JobNotFound,
    NotificationError,
    StorageError,
    StoreError,
    UnknownDestination,
)
from downloader.fetching.outbound import Policy
from downloader.jobs.models import CorruptJobError, DownloadResult, Job, State, relative_path
from downloader.observability import metrics
from downloader.observability.heartbeat import Heartbeat
from downloader.observability.stats import Stats
from downloader.pacing import Every
from downloader.store import keys
from downloader.worker.housekeeping import LeaseRecovery, adopt_forever, loop_until, run_due

log = logging.getLogger("downloader.notifier")

#: A failed file deletion is tried again after this long (the original dropped it).
DELETION_RETRY_SECONDS = 300.0
DELETIONS_PER_ROUND = 200
#: A callback unanswered after this long leaves its fast slot for a slow one.
SLOW_DELIVERY_SECONDS = 1.0


class Notifier:
    def __init__(
        self,
        settings: Settings,
        db: store.Store,
        storage: Storages,
        *,
        backends: dict[str, notifying.Backend] | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.stats = stats or Stats("notifier")
        self.token = store.new_token()
        self.heartbeat = Heartbeat(db, store.Instance.here("notifier", self.token, settings.pod_name))
        self.signing_keys = signing.parse_keys(settings.callback_signing_keys)
        self.backends = backends if backends is not None else build_backends(settings)
        self.threads = ThreadPoolExecutor(
            settings.notifier_concurrency + settings.notifier_slow_concurrency, thread_name_prefix="callback"
        )
        self._lock = threading.Lock()
        self._busy = 0
        self._delivering: set[str] = set()
        # deliveries in a fast slot: when they began (the other busy ones stepped aside)
        self._started: dict[str, float] = {}
        self._wake = threading.Event()
        # Whether callbacks may be waiting beyond those claimed: then an ended delivery's slot
        # is filled at once; else the next announcement (or due time) is waited for, and no
        # claim is sent only to find the queue empty. `_notices` counts announcements, so that
        # one arriving while a claim is under way is not lost.
        self._backlog = True
        self._notices = 0
        self._stopping = threading.Event()
        self._recovery = LeaseRecovery(db, settings, on_recovered=self._wake.set)
        self._next_reap = 0.0

    def run(self) -> None:
        keeper = threading.Thread(target=self._housekeeping, name="notifier-housekeeping", daemon=True)
        keeper.start()
        threading.Thread(
            target=self.db.listen_wakeups,
            args=(self._stopping, self._notice),
            kwargs={"channel": keys.CALLBACK_WAKEUP_CHANNEL, "on_subscribed": self._wake.set},
            name="notifier-wakeups",
            daemon=True,
        ).start()
        threading.Thread(
            target=adopt_forever,
            args=(self.db, self.settings, self._stopping, self._wake.set),
            name="notifier-adoption",
            daemon=True,
        ).start()
        log.info(
            "notifier %s delivering with %d threads (backends: %s)",
            self.token,
            self.settings.notifier_concurrency,
            ", ".join(sorted(self.backends)),
        )
        try:
            loop_until(self._stopping, self._dispatch_once, log)
        finally:
            self._finish_in_flight()
            keeper.join(timeout=5)

    def _finish_in_flight(self) -> None:
        """Callbacks in flight get the shutdown grace to finish; the rest are cut off by closing
        the backends, and their leases give them back to the fleet (delivery is at least once)."""
        deadline = time.monotonic() + min(
            self.settings.shutdown_grace_seconds, self.settings.callback_timeout_seconds
        )
        while self._busy and time.monotonic() < deadline:
            self._wake.wait(0.05)
            self._wake.clear()
        for backend in self.backends.values():
            backend.close()
        self.threads.shutdown(wait=True)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # --- delivery -----------------------------------------------------------------

    def _dispatch_once(self) -> None:
        with self._lock:
            slots = self.settings.notifier_concurrency
            fast = len(self._started)  # the others stepped aside
            free = min(slots - fast, slots + self.settings.notifier_slow_concurrency - self._busy)
        if free <= 0:
            self._wake.wait(0.5 if self._backlog else self.settings.scan_interval_seconds)
            self._wake.clear()
            return
        notices = self._notices
        claim = self.db.claim_callbacks(free, self.token, self.settings.lease_seconds)
        if claim.jobs:
            started = time.monotonic()
            with self._lock:
                self._busy += len(claim.jobs)
                self._delivering.update(claim.jobs)
                self._started.update(dict.fromkeys(claim.jobs, started))
            for job_id, claimed in claim.jobs.items():
                self.threads.submit(self._deliver_guarded, job_id, claimed)
        self._backlog = claim.more or self._notices != notices
        if self._backlog:
            return
        # Until announced (a callback queue that was empty got one, a retry or recovery was
        # queued), or until the next retry is due.
        wait = self.settings.scan_interval_seconds
        if claim.next_due is not None:
            wait = min(wait, max(0.005, claim.next_due - time.time()))
        self._wake.wait(wait)
        self._wake.clear()

    def _notice(self, _message: str) -> None:
        self._notices += 1
        self._backlog = True
        self._wake.set()

    def _deliver_guarded(self, job_id: str, claimed: store.ClaimedJob | None) -> None:
        try:
            self._deliver(job_id, claimed)
        except StoreError as exc:  # an outage is expected: one line, no traceback
            log.warning(
                "callback of job %s: redis unavailable (%s); its lease will expire and it is retried",
                job_id,
                exc,
            )
        except Exception:
            log.exception(
                "callback of job %s failed unexpectedly; its lease will expire and it is retried", job_id
            )
        finally:
            with self._lock:
                self._busy -= 1
                self._delivering.discard(job_id)
                self._started.pop(job_id, None)
            if self._backlog or self._stopping.is_set():
                self._wake.set()

    def _step_aside(self) -> None:
        """Deliveries unanswered for SLOW_DELIVERY_SECONDS free their fast slot (while slow
        slots last): a receiver that trickles, hangs or answers without end then holds a
        waiting thread until the callback timeout, never the capacity of healthy receivers."""
        cutoff = time.monotonic() - SLOW_DELIVERY_SECONDS
        with self._lock:
            room = self.settings.notifier_slow_concurrency - (self._busy - len(self._started))
            late = [job_id for job_id, began in self._started.items() if began <= cutoff][: max(0, room)]
            for job_id in late:
                del self._started[job_id]
        if late:
            self._wake.set()

    def _deliver(self, job_id: str, claimed: store.ClaimedJob | None) -> None:
        try:
            if claimed is None:
                raise JobNotFound(job_id)
            job, result = Job.from_hash(claimed.raw, claimed.options), claimed.result
        except (JobNotFound, CorruptJobError) as exc:
            log.warning("callback of job %s dropped: %s", job_id, exc)
            self._settling(job_id)
            self.db.drop_callback_claim(job_id, self.token)
            return
        if job.download_state not in (State.SUCCESS, State.FAILED):
            # The original still sent an all-empty payload here (bug 10.1.2); we do not.
            self._give_up(job, f"Invalid job download state: '{job.download_state}'")
            return
        backend_name, destination = notifying.destination(job)
        backend = self.backends.get(backend_name)
        if backend is None:
            self.stats.incr("undefinedBackendWithCallback")
            self._retry_or_fail(job, f"Undefined backend {backend_name} for job {job.job_string()}")
            return
        body = notifying.encode(notifying.payload(job, DownloadResult.decode(result)))
        message = notifying.Message(job.id, destination, body, self._headers(job, body))
        started = time.monotonic()
        try:
            backend.deliver(message)
        except NotificationError as exc:
            if isinstance(exc, UnknownDestination):
                self.stats.incr("unknownTopicOrPartition")
            if isinstance(exc.__cause__, DestinationNotAllowed):
                self.stats.incr("destinationNotAllowed")
            metrics.callback_attempted(backend_name, time.monotonic() - started, delivered=False)
            if self._stopping.is_set():
                self._give_back(job, str(exc))
                return
            self._retry_or_fail(job, str(exc), time.monotonic() - started)
            return
        took = time.monotonic() - started
        metrics.callback_attempted(backend_name, took, delivered=True)
        delete_at = time.time() + self.settings.deletion_delay_seconds
        self._next_reap = min(self._next_reap, delete_at)
        self._settling(job.id)
        if self.db.callback_delivered(job.id, self.token, delete_at, location_of(job).encode()):
            self.stats.incr("successfulCallbacks")
            metrics.CALLBACKS_DELIVERED.labels(metrics.backend_label(backend_name)).inc()
            log.info(
                "callback of job %s delivered by %s in %.3fs (attempt %d)",
                job.id,
                backend_name,
                took,
                job.callback_count,
                extra=_fields(job, "callback_delivered", took),
            )

    def _headers(self, job: Job, body: bytes) -> dict[str, str]:
        delivery = signing.delivery_id(job.id, job.download_count)
        return signing.headers(body, self.signing_keys, delivery)

    def _retry_or_fail(self, job: Job, error: str, duration: float | None = None) -> None:
        if job.callback_count >= self.settings.callback_max_attempts:
            self._give_up(job, error, duration)
            return
        log.warning(
            "callback of job %s failed (attempt %d), retrying: %s",
            job.id,
            job.callback_count,
            error,
            extra=_fields(job, "callback_retried", duration),
        )
        metrics.CALLBACKS_RETRIED.labels(_backend(job)).inc()
        self._count_failure(job, final=False)
        retry_at = time.time() + job.callback_count * self.settings.callback_backoff_seconds
        self._settling(job.id)
        self.db.callback_undelivered(
            job.id, self.token, {"CallbackState": State.PENDING.value, "CallbackMeta": error}, retry_at
        )
        self._wake.set()  # the dispatcher learns when the retry is due

    def _give_back(self, job: Job, error: str) -> None:
        """A delivery cut off by shutdown: queued again at once, the attempt not counted."""
        log.warning(
            "callback of job %s cut off by shutdown, queued again: %s",
            job.id,
            error,
            extra=_fields(job, "callback_retried", None),
        )
        self._settling(job.id)
        fields = {"CallbackState": State.PENDING.value, "CallbackCount": str(max(0, job.callback_count - 1))}
        self.db.callback_undelivered(job.id, self.token, fields, time.time())

    def _settling(self, job_id: str) -> None:
        """The callback's outcome is about to be written, which gives its lease up: no more
        renewals, and a renewal that finds the lease gone from now on is no loss."""
        with self._lock:
            self._delivering.discard(job_id)

    def _count_failure(self, job: Job, *, final: bool) -> None:
        """For the dashboard's callbacks by destination host; never in the way of delivery."""
        try:
            self.db.count_callback_failure(
                notifying.destination_host(*notifying.destination(job)), final=final
            )
        except StoreError as exc:
            log.debug("callback failure of job %s not counted: %s", job.id, exc)

    def _give_up(self, job: Job, error: str, duration: float | None = None) -> None:
        log.warning(
            "callback of job %s failed for good: %s",
            job.id,
            error,
            extra=_fields(job, "callback_failed", duration),
        )
        self.stats.incr("failedCallbacks")
        metrics.CALLBACKS_FAILED.labels(_backend(job)).inc()
        self._count_failure(job, final=True)
        self._settling(job.id)
        fields = {"CallbackState": State.FAILED.value, "CallbackMeta": error}
        delete_at = time.time() + self.settings.job_retention_seconds
        self._next_reap = min(self._next_reap, delete_at)
        self.db.callback_undelivered(
            job.id, self.token, fields, None, delete_at=delete_at, location=location_of(job).encode()
        )

    # --- housekeeping ---------------------------------------------------------------

    def _housekeeping(self) -> None:
        threading.Thread(target=self._rescue_orphans, name="notifier-rescue", daemon=True).start()
        renew = Every(self.settings.lease_seconds / 3)
        stats = Every(self.settings.stats_interval_seconds, first_now=True)
        steps = (
            (renew, self._renew),
            (self._recovery.due, self._recovery.recover_expired_leases),
            (self._reap_due, self._reap),
            (stats, self._publish_stats),
            (self.heartbeat.due, self.heartbeat.beat),
        )
        while not self._stopping.wait(0.1):
            self._step_aside()
            run_due(steps, log)

    def _rescue_orphans(self) -> None:
        """Once per start: jobs the original service popped and lost (as its notifier did
        for InProgress callbacks at start-up, and more: downloads too)."""
        try:
            found = self.db.rescue_orphans(pause=0.01)  # paced: a million jobs must not stall Redis
        except DownloaderError as exc:
            log.warning("start-up sweep for orphaned jobs failed: %s", exc)
            return
        if found is None:
            log.info("another process is sweeping for orphaned jobs; this notifier skips it")
            return
        if any(found.values()):
            log.warning(
                "queued again %d orphaned downloads and %d orphaned callbacks",
                found["download"],
                found["callback"],
            )
            self._wake.set()

    def _renew(self) -> None:
        with self._lock:
            held = list(self._delivering)
        lost = self.db.renew_callbacks(held, self.token, self.settings.lease_seconds)
        with self._lock:
            lost = [job_id for job_id in lost if job_id in self._delivering]  # others were settled meanwhile
        for job_id in lost:
            log.warning(
                "lost the lease of the callback of job %s; it may be delivered twice",
                job_id,
                extra={"event": "lease_lost", "job_id": job_id},
            )
            metrics.LEASES_LOST.labels("callback").inc()

    def _reap_due(self) -> bool:
        return time.time() >= self._next_reap

    def _reap(self) -> None:
        # Until the next deletion we know of is due; at the latest after the scan interval, for
        # entries that others (the original's notifier) add without telling us.
        self._next_reap = time.time() + self.settings.scan_interval_seconds
        ids, next_due = self.db.claim_deletions(DELETIONS_PER_ROUND, DELETION_RETRY_SECONDS)
        if len(ids) == DELETIONS_PER_ROUND:
            self._next_reap = time.time()  # more are due
        elif next_due is not None:
            self._next_reap = min(self._next_reap, next_due)
        targets = self.db.deletion_targets(ids)
        done: list[str] = []
        for job_id in ids:
            try:
                location = (
                    Location.decode(targets[job_id]) if job_id in targets else Location(relative_path(job_id))
                )
                self.storage.delete(location)
            except StorageError as exc:
                self.stats.incr("reaperFailures")
                log.warning("deleting the file of job %s failed, retrying later: %s", job_id, exc)
                continue
            done.append(job_id)
        self.db.deletions_done(done)
        if done:
            self.stats.incr("reaperSuccessfulDeletions", len(done))

    def _publish_stats(self) -> None:
        interval = self.settings.stats_interval_seconds
        self.db.write_stats("notifier", self.stats.to_json(), interval * keys.STATS_TTL_INTERVALS)


def _fields(job: Job, event: str, duration: float | None) -> dict[str, object]:
    """The structured fields of a callback's log line (downloader.observability.logs.FIELDS)."""
    return {
        "event": event,
        "job_id": job.id,
        "aggr_id": job.aggr_id,
        "duration": duration,
        "attempt": job.callback_count,
    }


def _backend(job: Job) -> str:
    """The bounded backend label of a job's callback (a job may name any backend)."""
    return metrics.backend_label(notifying.destination(job)[0])


def build_backends(settings: Settings) -> dict[str, notifying.Backend]:
    """The backends a notifier delivers with: http always; kafka once brokers are configured
    (the original's `backends.kafka`); sqs always (the queue URL names its region). Kafka's
    and AWS's clients are imported only when used."""
    backends: dict[str, notifying.Backend] = {
        "http": notifying.HttpBackend(
            settings.callback_timeout_seconds, settings.notifier_concurrency, Policy.from_settings(settings)
        )
    }
    if settings.kafka_bootstrap_servers or settings.kafka_config:
        from downloader.delivery.kafka_backend import KafkaBackend

        backends["kafka"] = KafkaBackend.from_settings(settings)
    from downloader.delivery.aws import SqsBackend

    backends["sqs"] = SqsBackend.from_settings(settings)
    return backends
