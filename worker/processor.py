"""The download loop: claim jobs within each aggregation's fleet-wide limit, download, record.

One scheduler thread claims (Lua, atomic) as many jobs as the process has free download
threads, from the aggregations it knows to have work: the registry, and those announced on
pub/sub; an aggregation found empty is left alone until announced again, so an idle worker
sends Redis next to nothing. The threads run one attempt each (`attempts.run_attempt`) and
write its outcome fenced by the lease token. One thread renews leases; a watchdog stops
downloads that overrun their deadline or whose lease went unconfirmed too long; housekeeping
re-reads the registry, recovers expired leases, checks the disk and publishes stats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from downloader import store
from downloader.config.settings import Settings
from downloader.delivery.storage import Storages
from downloader.errors import DownloaderError, StoreError
from downloader.fetching import diskcheck, resume
from downloader.fetching.download import Fetcher, FetchLimits
from downloader.fetching.outbound import Outbound
from downloader.jobs.hosts import HostPolicy
from downloader.jobs.models import Aggregation, CorruptJobError, Job
from downloader.observability import metrics
from downloader.observability.heartbeat import Heartbeat
from downloader.observability.stats import Stats
from downloader.pacing import Every
from downloader.store import keys
from downloader.worker import attempts
from downloader.worker.attempts import AttemptContext, Download
from downloader.worker.housekeeping import LeaseRecovery, adopt_forever, loop_until, run_due

log = logging.getLogger("downloader.worker")

#: After "full" (every lease of the aggregation is taken, some by other processes), look
#: again this soon; our own downloads' ends retry at once.
FULL_DELAY = 0.2
#: A paused aggregation (its Aggregation resource says so) is looked at again this often.
PAUSED_DELAY = 5.0
#: next_try of an aggregation with nothing queued: only an announcement or the registry
#: brings it back.
NEVER = float("inf")
#: A download stops by itself once its lease has gone this long (a fraction of the lease)
#: without a confirmed renewal: before Redis lets the lease expire and another worker takes
#: the job, so a worker cut off from Redis or stalled never doubles a download.
FENCE_FRACTION = 0.75
#: How often the watchdog looks at deadlines and leases (it never waits on the network).
WATCHDOG_INTERVAL = 0.1


def next_try_after(claim: store.Claim, now: float, *, announced: bool, poll_interval: float) -> float:
    """When to claim from an aggregation again after `claim`: at once while it left due jobs
    (or was `announced` meanwhile), soon when full, later when paused or its next job is not
    due yet, NEVER when nothing is queued (an announcement or the registry brings it back)."""
    if claim.jobs and claim.more:
        return 0.0
    if claim.full or claim.held_by_hosts:
        return now + FULL_DELAY
    if claim.paused:
        return now + PAUSED_DELAY
    if claim.next_ready is not None:
        return max(claim.next_ready, now + poll_interval)
    return 0.0 if announced else NEVER


def unconfirmed_too_long(downloads: Mapping[str, Download], now: float, lease_seconds: float) -> list[str]:
    """The downloads still going whose lease is past its fence (see FENCE_FRACTION)."""
    fence = lease_seconds * FENCE_FRACTION
    return [
        job_id for job_id, d in downloads.items() if not d.cancelled.is_set() and now - d.confirmed >= fence
    ]


#: Aggregations whose last limit a worker keeps for the dashboard (see `Processor._limits`).
LIMITS_REMEMBERED = 10_000


@dataclasses.dataclass
class _AggregationState:
    next_try: float = 0.0
    noticed: int = 0
    """`Processor._notices` when it was last announced: an announcement that arrives while a
    claim finds the queue empty must not be lost."""
    running: dict[str, Download] = dataclasses.field(default_factory=dict)
    backlog: bool = True
    """The last claim left due jobs (or found the limit reached): a download that ends frees
    room for them, so the aggregation is looked at again at once. Without one, a claim then
    would only find what the last one said was left: nothing due."""


def readable_job(job_id: str, aggr_id: str, claimed: store.ClaimedJob) -> Job:
    """The job a claim read, if it can run: its hash decodes (the original's rules), and it is
    the job and of the aggregation it was claimed as (else its outcome would be written to
    another job's keys, or its lease never given back). CorruptJobError says why not."""
    job = Job.from_hash(claimed.raw, claimed.options)
    if job.id != job_id:
        raise CorruptJobError(f"its ID field is {job.id!r}, not {job_id!r}")
    if job.aggr_id != aggr_id:
        raise CorruptJobError(f"its AggrID field is {job.aggr_id!r}, but it was queued in {aggr_id!r}")
    return job


class Processor:
    """Downloads for all aggregations, or only `only` (one per pod under the operator)."""

    def __init__(
        self,
        settings: Settings,
        db: store.Store,
        storage: Storages,
        *,
        only: frozenset[str] = frozenset(),
        stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.only = only
        self.stats = stats or Stats("processor")
        self.token = store.new_token()
        self.host_policy = HostPolicy.from_settings(settings)
        self.heartbeat = Heartbeat(db, store.Instance.here("worker", self.token, settings.pod_name))
        self.fetcher = Fetcher(
            FetchLimits(
                connect_timeout=settings.connect_timeout_seconds,
                total_timeout=settings.download_timeout_seconds,
                max_redirects=settings.max_redirects,
                max_bytes=settings.max_download_bytes,
            ),
            settings.default_request_headers,
            pool_size=settings.worker_concurrency,
            outbound=Outbound.from_settings(settings),
            resume=settings.resume_downloads,
        )
        self.attempt_context = AttemptContext(
            db=db,
            token=self.token,
            fetcher=self.fetcher,
            storage=storage,
            stats=self.stats,
            tmp_dir=settings.tmp_dir,
            download_url=settings.download_url,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            max_retries=settings.max_retries,
            job_retention_seconds=settings.job_retention_seconds,
            retry_after_max_seconds=settings.retry_after_max_seconds,
            sync_files=settings.sync_files,
        )
        self.threads = ThreadPoolExecutor(settings.worker_concurrency, thread_name_prefix="download")
        self.disk = diskcheck.DiskMonitor(
            settings.disk_high_watermark_percent, settings.disk_low_watermark_percent
        )
        self._aggregations: dict[str, _AggregationState] = {a: _AggregationState() for a in only}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._recovery = LeaseRecovery(db, settings, on_recovered=self._wake.set)
        self._reread = threading.Event()
        """Set when the registry must be read again now (after a (re)subscription)."""
        self._paused = threading.Event()
        self._busy = 0
        self._rotation = 0
        self._notices = 0
        #: The limit each aggregation last had when we claimed from it: said to the dashboard
        #: when a claim finds it idle (and deletes its hash, as the original did).
        self._limits: dict[str, int] = {}

    # --- lifecycle ----------------------------------------------------------------

    def run(self) -> None:
        """Serve until stop(); then drain within the grace period and give back the rest."""
        Path(self.settings.tmp_dir).mkdir(parents=True, exist_ok=True)
        self.storage.check_writable()
        self._check_disk()  # a worker starting on a full disk must not claim anything first
        keeper = threading.Thread(target=self._housekeeping, name="worker-housekeeping", daemon=True)
        keeper.start()
        drained = threading.Event()
        renewer = threading.Thread(
            target=self._keep_leases, args=(drained,), name="worker-leases", daemon=True
        )
        renewer.start()
        watchdog = threading.Thread(target=self._watch, args=(drained,), name="worker-watchdog", daemon=True)
        watchdog.start()
        listener = threading.Thread(
            target=self.db.listen_wakeups,
            args=(self._stopping, self._notice),
            kwargs={"on_subscribed": self._reread.set},
            name="worker-wakeups",
            daemon=True,
        )
        listener.start()
        if not self.only:
            adoption = (self.db, self.settings, self._stopping, self._reread.set)
            threading.Thread(target=adopt_forever, args=adoption, name="worker-adoption", daemon=True).start()
        log.info(
            "worker %s serving %s with %d download threads",
            self.token,
            ", ".join(sorted(self.only)) or "all aggregations",
            self.settings.worker_concurrency,
        )
        try:
            loop_until(self._stopping, self._schedule_once, log)
        finally:
            self._drain()
            drained.set()
            keeper.join(timeout=5)
            renewer.join(timeout=5)
            watchdog.join(timeout=5)
            self.fetcher.close()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # --- scheduling ---------------------------------------------------------------

    def _schedule_once(self) -> None:
        if self._paused.is_set():
            self._stopping.wait(0.2)
            return
        free = self.settings.worker_concurrency - self._busy
        if free <= 0:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        now = time.time()
        names = self._ready_aggregations(now)
        claimed = 0
        for aggr_id in names:
            got = self._claim(aggr_id, free - claimed, now)
            claimed += got
            if claimed >= free or self._stopping.is_set():
                break
        if claimed == 0:
            self._sleep_until_next(now)

    def _ready_aggregations(self, now: float) -> list[str]:
        with self._lock:
            names = [a for a, s in self._aggregations.items() if s.next_try <= now]
        if names:
            self._rotation = (self._rotation + 1) % len(names)
            names = names[self._rotation :] + names[: self._rotation]  # no aggregation starves the rest
        return names

    def _claim(self, aggr_id: str, wanted: int, now: float) -> int:
        # The lease starts now, not when this scheduling pass began: a slow pass over many
        # aggregations would otherwise grant shorter leases than configured.
        asked = time.monotonic()
        notices_before = self._notices
        result = self.db.claim(
            aggr_id, wanted, self.token, self.settings.lease_seconds, host_policy=self.host_policy
        )
        self._note_limit(aggr_id, result)
        with self._lock:
            state = self._aggregations.get(aggr_id)
            if state is None:
                state = self._aggregations[aggr_id] = _AggregationState()
            state.backlog = result.more or result.full or result.held_by_hosts
            state.next_try = next_try_after(
                result,
                now,
                announced=state.noticed > notices_before,  # since we asked: look again
                poll_interval=self.settings.poll_interval_seconds,
            )
            idle = state.next_try == NEVER and not state.running and not result.jobs
            if idle and aggr_id not in self.only:  # forgotten until announced again
                del self._aggregations[aggr_id]
        if result.jobs:
            assert result.aggregation is not None
            self._start(result.aggregation, result.jobs, asked)
        return len(result.jobs)

    def _note_limit(self, aggr_id: str, result: store.Claim) -> None:
        if result.aggregation is not None:
            if len(self._limits) >= LIMITS_REMEMBERED and aggr_id not in self._limits:
                self._limits.clear()  # aggregations that others found idle: forget them all
            self._limits[aggr_id] = result.aggregation.limit
        elif result.idle and aggr_id in self._limits:
            self.db.remember_limit(aggr_id, self._limits.pop(aggr_id))

    def _notice(self, aggr_id: str) -> None:
        """An aggregation's queue just got its first job: look at it now."""
        if self.only and aggr_id not in self.only:
            return
        with self._lock:
            self._notices += 1
            state = self._aggregations.setdefault(aggr_id, _AggregationState())
            state.next_try, state.noticed = 0.0, self._notices
        self._wake.set()

    def _sleep_until_next(self, now: float) -> None:
        with self._lock:
            soonest = min((s.next_try for s in self._aggregations.values()), default=NEVER)
        # NEVER: nothing to do until an announcement (or the registry's re-read) wakes us.
        self._wake.wait(min(self.settings.scan_interval_seconds, max(0.005, soonest - now)))
        self._wake.clear()

    def _start(
        self, aggregation: Aggregation, jobs: Mapping[str, store.ClaimedJob], claimed_at: float
    ) -> None:
        gone: list[str] = []
        unreadable: dict[str, str] = {}
        for job_id, claimed in jobs.items():
            if not claimed.raw:
                gone.append(job_id)
                continue
            try:
                job = readable_job(job_id, aggregation.id, claimed)
            except CorruptJobError as exc:
                unreadable[job_id] = str(exc)
                continue
            self._submit(aggregation, job, claimed_at)
        # Only once every readable job runs: a Redis error here must not hold them up.
        for job_id in gone:
            log.warning(
                "job %s of %s has no hash any more; dropping it from the queue", job_id, aggregation.id
            )
            self._let_go(aggregation.id, job_id, "")
        for job_id, reason in unreadable.items():
            log.error(
                "job %s of %s is unreadable, set aside as a dead letter: %s",
                job_id,
                aggregation.id,
                reason,
                extra={"event": "job_dead_lettered", "job_id": job_id, "aggr_id": aggregation.id},
            )
            self._let_go(aggregation.id, job_id, reason, url=jobs[job_id].raw.get("URL", ""))

    def _let_go(self, aggr_id: str, job_id: str, reason: str, url: str = "") -> None:
        """Give up the lease of a claimed job that cannot run: dropped when its hash is gone
        (`reason` ""), set aside as a dead letter otherwise."""
        try:
            if reason:
                self.db.set_aside(aggr_id, job_id, self.token, reason=reason, url=url)
            else:
                self.db.drop_claim(aggr_id, job_id, self.token)
        except DownloaderError as exc:  # its lease expires and the next claim looks again
            log.warning(
                "job %s: could not give up its lease (%s); it comes back when the lease expires", job_id, exc
            )

    def _submit(self, aggregation: Aggregation, job: Job, claimed_at: float) -> None:
        download = Download(threading.Event(), confirmed=claimed_at)
        with self._lock:
            state = self._aggregations.setdefault(aggregation.id, _AggregationState())
            if not state.running:
                self.stats.incr("spawnedWorkerPools")
                self.stats.gauge_add("workerPools", 1, "maxWorkerPools")
            state.running[job.id] = download
            self._busy += 1
        self.stats.incr("spawnedWorkers")
        self.stats.gauge_add("workers", 1, "maxWorkers")
        self.threads.submit(self._work, aggregation, job, download)

    def _work(self, aggregation: Aggregation, job: Job, download: Download) -> None:
        try:
            attempts.run_attempt(self.attempt_context, aggregation, job, download)
        except StoreError as exc:  # an outage is expected: one line, no traceback
            log.warning(
                "job %s: redis unavailable (%s); its lease will expire and it will be retried", job.id, exc
            )
        except Exception:
            log.exception("unexpected error on job %s; its lease will expire and it will be retried", job.id)
        finally:
            self._done(aggregation.id, job.id)

    def _done(self, aggr_id: str, job_id: str) -> None:
        with self._lock:
            state = self._aggregations.get(aggr_id)
            if state is not None:
                state.running.pop(job_id, None)
                # A backlog may run now. And once our last download of a drained queue ends,
                # one more claim finds the aggregation idle and retires it (registry, hash)
                # now rather than at the registry's next re-read.
                if state.backlog or (not state.running and state.next_try == NEVER):
                    state.next_try = 0.0
                if not state.running:
                    self.stats.gauge_add("workerPools", -1)
            self._busy -= 1
        self.stats.gauge_add("workers", -1)
        self._wake.set()

    # --- housekeeping -------------------------------------------------------------

    def _keep_leases(self, drained: threading.Event) -> None:
        """Renew the leases of running downloads, in a thread of its own: behind a slow scan or
        stats write a lease could lapse, another worker take the job, and the aggregation's
        fleet-wide limit be exceeded. Runs until the drain at shutdown is over."""
        while not drained.wait(self.settings.lease_seconds / 4):
            try:
                self._renew()
            except DownloaderError as exc:
                log.warning("renewing leases failed: %s", exc)

    def _watch(self, drained: threading.Event) -> None:
        """Stop downloads past their deadline or their lease's fence. Never touches Redis, so
        an unreachable Redis cannot hold it up while leases run out."""
        while not drained.wait(WATCHDOG_INTERVAL):
            self._fence()
            self.fetcher.enforce_deadlines()

    def _fence(self) -> None:
        now = time.monotonic()
        for aggr_id, running in self._held().items():
            for job_id in unconfirmed_too_long(running, now, self.settings.lease_seconds):
                fields = {"event": "lease_fenced", "job_id": job_id, "aggr_id": aggr_id}
                log.warning(
                    "job %s: its lease was not renewed for %.1fs; stopping the download before "
                    "another worker may take it",
                    job_id,
                    now - running[job_id].confirmed,
                    extra=fields,
                )
                metrics.LEASES_FENCED.inc()
                running[job_id].cancelled.set()

    def _housekeeping(self) -> None:
        reread = Every(self.settings.scan_interval_seconds, first_now=True)
        stats = Every(self.settings.stats_interval_seconds, first_now=True)
        disk = Every(self.settings.disk_check_interval_seconds, first_now=True)
        # a tenth of the retention, at most hourly: a partial outlives it by that at most
        partials = Every(min(self.settings.partial_retention_seconds / 10, 3600.0), first_now=True)
        steps = (
            (self._reread_due(reread), self._read_registry),
            (self._recovery.due, self._recovery.recover_expired_leases),
            (stats, self._publish_stats),
            (disk, self._check_disk),
            (partials, self._sweep_partials),
            (self.heartbeat.due, self.heartbeat.beat),
        )
        while not self._stopping.wait(0.1):
            run_due(steps, log)
        self._publish_final_stats()

    def _held(self) -> dict[str, dict[str, Download]]:
        with self._lock:
            return {a: dict(s.running) for a, s in self._aggregations.items() if s.running}

    def _renew(self) -> None:
        for aggr_id, running in self._held().items():
            asked = time.monotonic()
            lost = set(self.db.renew(aggr_id, list(running), self.token, self.settings.lease_seconds))
            for job_id, download in running.items():
                if job_id not in lost:
                    download.confirmed = max(download.confirmed, asked)
                elif download.ending or not self._still_running(aggr_id, job_id):
                    continue  # its outcome was written meanwhile, and the lease went with it
                else:
                    fields = {"event": "lease_lost", "job_id": job_id, "aggr_id": aggr_id}
                    log.warning("lost the lease of job %s; abandoning this attempt", job_id, extra=fields)
                    metrics.LEASES_LOST.labels("download").inc()
                    download.cancelled.set()

    def _still_running(self, aggr_id: str, job_id: str) -> bool:
        with self._lock:
            state = self._aggregations.get(aggr_id)
            return state is not None and job_id in state.running

    def _reread_due(self, every: Every) -> Callable[[], bool]:
        return lambda: every() or self._reread.is_set()

    def _read_registry(self) -> None:
        """Look again at every aggregation with work: announcements are not stored, so one
        sent while we were not subscribed would otherwise be missed until the next one."""
        self._reread.clear()
        found = set(self.only) if self.only else self.db.registered_aggregations()
        with self._lock:
            for aggr_id in found:
                state = self._aggregations.setdefault(aggr_id, _AggregationState())
                if state.next_try == NEVER:
                    state.next_try = 0.0
        self._wake.set()

    def _sweep_partials(self) -> None:
        swept = resume.sweep(Path(self.settings.tmp_dir), self.settings.partial_retention_seconds)
        if swept:
            metrics.PARTIALS_SWEPT.inc(swept)
            log.info(
                "deleted %d partial downloads untouched for %gs",
                swept,
                self.settings.partial_retention_seconds,
            )

    def _check_disk(self) -> None:
        try:
            used = diskcheck.usage_percent(Path(self.settings.tmp_dir))
        except OSError as exc:
            log.warning("disk check of %s failed: %s", self.settings.tmp_dir, exc)
            return
        change = self.disk.observe(used)
        metrics.DISK_USED.set(used / 100)
        if change is False:
            log.error("disk %s is %.0f%% full: pausing downloads", self.settings.tmp_dir, used)
            self._paused.set()
            for running in self._held().values():
                for download in running.values():
                    download.cancelled.set()
        elif change is True:
            log.warning("disk %s is %.0f%% full: resuming downloads", self.settings.tmp_dir, used)
            self._paused.clear()
            self._wake.set()
        metrics.DISK_PAUSED.set(self._paused.is_set())

    def _publish_stats(self) -> None:
        interval = self.settings.stats_interval_seconds
        self.db.write_stats("processor", self.stats.to_json(), interval * keys.STATS_TTL_INTERVALS)

    def _publish_final_stats(self) -> None:
        with contextlib.suppress(DownloaderError):
            self._publish_stats()

    # --- shutdown -----------------------------------------------------------------

    def _drain(self) -> None:
        """Let running downloads finish within the grace period, then interrupt and release."""
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        while self._busy and time.monotonic() < deadline:
            self._wake.wait(0.1)
            self._wake.clear()
        held = self._held()
        if held:
            log.warning("grace period over: interrupting %d downloads", sum(map(len, held.values())))
            for running in held.values():
                for download in running.values():
                    download.cancelled.set()
            self.fetcher.enforce_deadlines()
            self.threads.shutdown(wait=False, cancel_futures=True)
            end = time.monotonic() + 5
            while self._busy and time.monotonic() < end:
                self._wake.wait(0.1)
                self.fetcher.enforce_deadlines()
        for aggr_id, running in self._held().items():
            for job_id in running:
                attempts.release(self.attempt_context, aggr_id, job_id)
        self.threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped", self.token)
