"""Every Prometheus metric of the service, defined here and only here, in one registry.

Labels stay bounded: never URLs or job ids. Per-aggregation series exist only on
gauges (the Redis backlog, the operator's workers), for at most AGGREGATION_SERIES_MAX
aggregations (largest first); the rest are summed into aggregation="_other", and with
`metrics_aggregation_labels` off everything is one aggregation="_all" series. Hosts label
only the two politeness gauges, for at most HOST_SERIES_MAX hosts, the rest in host="_other".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from downloader.config.settings import Settings
from downloader.errors import DownloadError, FailureReason, Interrupted, StoreError
from downloader.version import __version__

if TYPE_CHECKING:
    from downloader.store import AsyncStore, HostLoad

log = logging.getLogger("downloader.observability.metrics")

#: Series per aggregation-labelled gauge, plus one "_other": enough for a dashboard's top
#: list, few enough that 10,000 aggregations cost the same as 20.
AGGREGATION_SERIES_MAX = 20
OTHER = "_other"
ALL = "_all"
#: The API reads the backlog from Redis at most this often, however often it is scraped.
BACKLOG_MIN_AGE_SECONDS = 1.0
#: Series per host-labelled gauge, plus one "_other"; HOST_SERIES_READ hosts are read per
#: refresh, so "_other" sums that many at most.
HOST_SERIES_MAX = 20
HOST_SERIES_READ = 200
#: The operator forgets an aggregation's worker count it has not reconciled for this long.
WORKERS_STALE_SECONDS = 600.0

#: The `reason` labels of failed attempts: every FailureReason but INTERRUPTED (not a failure).
FAILURE_REASONS = tuple(r.value for r in FailureReason if r is not FailureReason.INTERRUPTED)
CALLBACK_BACKENDS = ("http", "kafka", "sqs")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The `_created` series double every counter for nothing a dashboard uses.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
prometheus_client.ProcessCollector(namespace="downloader", registry=REGISTRY)

BUILD = Info("downloader_build", "Version of the running code.", registry=REGISTRY)
BUILD.info({"version": __version__})


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    return Counter(name, doc, labels, registry=REGISTRY)


def _histogram(name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
    return Histogram(name, doc, labels, buckets=buckets, registry=REGISTRY)


# --- API ------------------------------------------------------------------------------

JOBS_ENQUEUED = _counter("downloader_jobs_enqueued", "Jobs accepted by POST /download (API).")
IDEMPOTENT_REPLAYS = _counter(
    "downloader_idempotent_replays",
    "POST /download answered with the job an earlier request with the same Idempotency-Key queued.",
)
IDEMPOTENCY_CONFLICTS = _counter(
    "downloader_idempotency_conflicts",
    "POST /download refused (409): its Idempotency-Key names a job of a different request.",
)
HTTP_REQUESTS = _counter(
    "downloader_http_requests",
    "API requests by route template (or 'unmatched'), method and status class.",
    ["route", "method", "status_class"],
)
HTTP_DURATION = _histogram(
    "downloader_http_request_duration_seconds",
    "API request latency by route template.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    ["route"],
)

# --- worker ---------------------------------------------------------------------------

JOBS_STARTED = _counter("downloader_jobs_started", "Download attempts started.")
JOBS_SUCCEEDED = _counter("downloader_jobs_succeeded", "Download attempts that stored the file.")
JOBS_FAILED = _counter(
    "downloader_jobs_failed",
    "Jobs failed for good (no attempt left or not retriable), by reason.",
    ["reason"],
)
JOBS_RETRIED = _counter(
    "downloader_jobs_retried",
    "Failed attempts whose job was queued again after a backoff, by reason.",
    ["reason"],
)
JOBS_GIVEN_BACK = _counter(
    "downloader_jobs_given_back",
    "Attempts that ended without an outcome: interrupted (shutdown, full disk) or lease lost.",
)
DOWNLOAD_DURATION = _histogram(
    "downloader_download_duration_seconds",
    "Duration of download attempts (fetch, checks, store).",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    ["outcome"],
)
DOWNLOAD_SIZE = _histogram(
    "downloader_download_size_bytes",
    "Size of downloaded files.",
    tuple(float(1 << n) for n in range(10, 31, 2)),  # 1 KiB .. 1 GiB, x4
)
DOWNLOADED_BYTES = _counter("downloader_downloaded_bytes", "Bytes of downloaded files.")
DOWNLOAD_RESPONSES = _counter(
    "downloader_download_responses", "HTTP responses to downloads by status class.", ["status_class"]
)
DOWNLOADS_RESUMED = _counter(
    "downloader_downloads_resumed",
    "Download attempts that continued the bytes an earlier attempt stored (206 to Range + If-Range).",
)
RESUMED_BYTES = _counter("downloader_resumed_bytes", "Bytes kept from earlier attempts, not fetched again.")
RESUME_RESTARTS = _counter(
    "downloader_resume_restarts",
    "Partial downloads that could not be continued (the file changed, or the server answered "
    "another range) and started again from byte 0.",
)
PARTIALS_SWEPT = _counter(
    "downloader_partial_downloads_swept",
    "Partial downloads deleted after DOWNLOADER_PARTIAL_RETENTION_SECONDS untouched.",
)
DOWNLOADS_IN_PROGRESS = Gauge(
    "downloader_downloads_in_progress", "Downloads running in this process.", registry=REGISTRY
)
DESTINATION_BLOCKED = _counter(
    "downloader_destination_blocked",
    "Downloads (processor) and callbacks (notifier) refused: non-public destination (SSRF).",
    ["component"],
)
LEASES_LOST = _counter(
    "downloader_leases_lost", "Leases this process found taken from it while working.", ["kind"]
)
LEASES_FENCED = _counter(
    "downloader_leases_fenced",
    "Downloads a worker stopped itself because their lease went unconfirmed too long (Redis "
    "unreachable, or the process stalled), before another worker could take the job.",
)
LEASE_RECOVERIES = _counter(
    "downloader_lease_recoveries",
    "Expired leases of lost processes given back (requeued) or, after repeated crashes, failed.",
    ["kind", "result"],
)
HOST_PAUSES = _counter(
    "downloader_host_pauses",
    "Origin hosts paused fleet-wide by a 429 or 503 with Retry-After, by status.",
    ["status"],
)
DISK_PAUSED = Gauge(
    "downloader_disk_paused", "1 while downloads pause on a full tmp disk.", registry=REGISTRY
)
DISK_USED = Gauge("downloader_disk_used_ratio", "Used fraction of the tmp filesystem.", registry=REGISTRY)

# --- notifier -------------------------------------------------------------------------

CALLBACKS_DELIVERED = _counter("downloader_callbacks_delivered", "Callbacks delivered.", ["backend"])
CALLBACKS_RETRIED = _counter(
    "downloader_callbacks_retried", "Failed callback attempts scheduled again.", ["backend"]
)
CALLBACKS_FAILED = _counter(
    "downloader_callbacks_failed", "Callbacks given up (attempts used up, or undeliverable).", ["backend"]
)
CALLBACK_DURATION = _histogram(
    "downloader_callback_duration_seconds",
    "Latency of callback attempts by backend and outcome.",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    ["backend", "outcome"],
)
FILE_DELETIONS = _counter("downloader_file_deletions", "Files the reaper deleted or failed to.", ["result"])

# --- operator -------------------------------------------------------------------------

RECONCILES = _counter("downloader_operator_reconciles", "Reconciles of Aggregation resources.")
RECONCILE_ERRORS = _counter(
    "downloader_operator_reconcile_errors", "Reconciles that failed or saw Redis down, by cause.", ["cause"]
)
SWEEP_SECONDS = _histogram(
    "downloader_operator_sweep_seconds",
    "Duration of the operator's sweeps, each a refresh of every Aggregation.",
    (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
BACKLOG_ERRORS = _counter("downloader_backlog_refresh_errors", "Failed reads of the backlog from Redis.")


# --- pure helpers -----------------------------------------------------------------------


def status_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 600 else "other"


def failure_reason(err: DownloadError) -> str:
    """The bounded reason class of a failed attempt: the `reason` its raiser set (never read
    from its message)."""
    return err.reason.value


def backend_label(name: str) -> str:
    """A callback backend as a label: a job may name any backend, the label only known ones."""
    if not name:
        return "none"
    return name if name in CALLBACK_BACKENDS else "other"


def bounded(
    values: Mapping[str, Sequence[int]], *, limit: int = AGGREGATION_SERIES_MAX, per_aggregation: bool = True
) -> dict[str, tuple[int, ...]]:
    """At most `limit` aggregations (largest sum first, then by name) keep their own series;
    the rest are summed into OTHER, so totals over the label stay exact. Without
    `per_aggregation`, one ALL series holds the sums."""
    if not values:
        return {}
    width = len(next(iter(values.values())))
    if not per_aggregation:
        return {ALL: _sums(values.values(), width)}
    ranked = sorted(values, key=lambda a: (-sum(values[a]), a))
    out = {a: tuple(values[a]) for a in ranked[:limit]}
    if len(ranked) > limit:
        out[OTHER] = _sums((values[a] for a in ranked[limit:]), width)
    return out


def _sums(rows: Iterable[Sequence[int]], width: int) -> tuple[int, ...]:
    totals = [0] * width
    for row in rows:
        for i, v in enumerate(row):
            totals[i] += v
    return tuple(totals)


# --- recording (called by the worker, notifier, API and operator) -------------------------


def attempt_done(
    error: DownloadError | None, *, terminal: bool, written: bool, size: int, seconds: float
) -> None:
    """One download attempt's outcome; `written` is whether its lease still held."""
    if isinstance(error, Interrupted) or not written:
        JOBS_GIVEN_BACK.inc()
        return
    if error is None:
        JOBS_SUCCEEDED.inc()
        DOWNLOAD_DURATION.labels("success").observe(seconds)
        DOWNLOAD_SIZE.observe(size)
        DOWNLOADED_BYTES.inc(size)
        return
    DOWNLOAD_DURATION.labels("failure").observe(seconds)
    (JOBS_FAILED if terminal else JOBS_RETRIED).labels(failure_reason(error)).inc()


def callback_attempted(backend: str, seconds: float, *, delivered: bool) -> None:
    CALLBACK_DURATION.labels(backend_label(backend), "delivered" if delivered else "failed").observe(seconds)


def lease_recovered(kind: str, result: int) -> None:
    """`result` of a lease recovery: 1 queued again, 2 failed for good, else nothing happened."""
    if result in (1, 2):
        LEASE_RECOVERIES.labels(kind, "requeued" if result == 1 else "failed").inc()


def request_done(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = _request_series(route, method, status)
    count, duration = series
    count.inc()
    duration.observe(seconds)


#: The two series each (route template, method, status) moves, found once: `labels()` costs a
#: lock and several lookups per call, on every API request. Capped, as methods are the
#: client's (the labels themselves are bounded: unknown methods count as "other").
_REQUEST_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_REQUEST_SERIES_MAX = 4096


def _request_series(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    label = method if method in HTTP_METHODS else "other"
    series = HTTP_REQUESTS.labels(route, label, status_class(status)), HTTP_DURATION.labels(route)
    if len(_REQUEST_SERIES) < _REQUEST_SERIES_MAX:
        _REQUEST_SERIES[(route, method, status)] = series
    return series


# The original's stats names (downloader/observability/stats.py) that also feed a metric: Stats calls these,
# so the JSON and the metric are one count.
_STAT_COUNTERS: dict[str, tuple[Counter, str]] = {
    "reaperSuccessfulDeletions": (FILE_DELETIONS, "deleted"),
    "reaperFailures": (FILE_DELETIONS, "failed"),
}
_RESPONSE_PREFIX = "download.response."


def stat_incremented(component: str, name: str, by: int) -> None:
    if name.startswith(_RESPONSE_PREFIX):
        code = name[len(_RESPONSE_PREFIX) :]
        if code.isdigit():  # the others (mime, tls, body, ...) are failure reasons
            DOWNLOAD_RESPONSES.labels(status_class(int(code))).inc(by)
    elif name == "destinationNotAllowed":
        DESTINATION_BLOCKED.labels(component if component in ("processor", "notifier") else "other").inc(by)
    elif name in _STAT_COUNTERS:
        counter, label = _STAT_COUNTERS[name]
        counter.labels(label).inc(by)


def stat_gauge_moved(name: str, by: int) -> None:
    if name == "workers":
        DOWNLOADS_IN_PROGRESS.inc(by)


# --- gauges per aggregation ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What Redis holds: queued (`jobs:<aggr>`) and leased (`inflight:<aggr>`) per aggregation."""

    queued: Mapping[str, int]
    in_flight: Mapping[str, int]
    callbacks: int = 0


class BacklogCollector(Collector):
    """The last Backlog read, as bounded gauges. The API refreshes it before answering a
    scrape (`refresh_async`), at most once per BACKLOG_MIN_AGE_SECONDS."""

    def __init__(self) -> None:
        self.per_aggregation = True
        self._backlog = Backlog({}, {})
        self._read_at = -BACKLOG_MIN_AGE_SECONDS

    def update(self, backlog: Backlog) -> None:
        self._backlog = backlog
        self._read_at = time.monotonic()

    async def refresh_async(self, db: AsyncStore) -> None:
        """Read the backlog through the store (the workers SCAN the same keys every second
        anyway): a few round trips however many aggregations."""
        # No lock: two scrapes racing both read Redis, which is harmless and rare.
        if time.monotonic() - self._read_at < BACKLOG_MIN_AGE_SECONDS:
            return
        try:
            rows = await db.backlogs(lambda _: True)
            callbacks = await db.callbacks_queued()
        except StoreError as exc:  # a scrape still answers, with the last values
            BACKLOG_ERRORS.inc()
            log.warning("reading the backlog for /metrics failed: %s", exc)
            return
        queued = {aggr: q for aggr, q, _ in rows if q}
        self.update(Backlog(queued, {aggr: f for aggr, _, f in rows if f}, callbacks=callbacks))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        b = self._backlog
        names = set(b.queued) | set(b.in_flight)
        rows = {a: (b.queued.get(a, 0), b.in_flight.get(a, 0)) for a in names}
        depth = _family(
            "downloader_queue_depth",
            "Jobs queued per aggregation (retries waiting for their backoff included).",
        )
        leased = _family("downloader_in_flight", "Jobs leased by a worker per aggregation.")
        for label, (queued, in_flight) in bounded(rows, per_aggregation=self.per_aggregation).items():
            depth.add_metric([label], queued)
            leased.add_metric([label], in_flight)
        yield depth
        yield leased
        yield GaugeMetricFamily(
            "downloader_pending_jobs", "Jobs queued over all aggregations.", value=sum(b.queued.values())
        )
        yield GaugeMetricFamily(
            "downloader_aggregations_with_backlog",
            "Aggregations with queued or leased jobs.",
            value=len(names),
        )
        yield GaugeMetricFamily(
            "downloader_callbacks_pending",
            "Callbacks queued or being delivered (retries waiting for their backoff included).",
            value=b.callbacks,
        )


def _family(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["aggregation"])


class WorkersCollector(Collector):
    """Worker pods per aggregation as the operator last planned them (desired and ready)."""

    def __init__(self) -> None:
        self.per_aggregation = True
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[int, int, float]] = {}

    def record(self, aggr_id: str, desired: int, ready: int) -> None:
        with self._lock:
            self._rows[aggr_id] = (desired, ready, time.monotonic())

    def forget(self, aggr_id: str) -> None:
        with self._lock:
            self._rows.pop(aggr_id, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cutoff = time.monotonic() - WORKERS_STALE_SECONDS
        with self._lock:
            self._rows = {a: r for a, r in self._rows.items() if r[2] >= cutoff}
            rows = {a: (r[0], r[1]) for a, r in self._rows.items()}
        desired = _family("downloader_operator_workers", "Worker pods the operator wants per aggregation.")
        ready = _family("downloader_operator_ready_workers", "Ready worker pods per aggregation.")
        for label, (want, have) in bounded(rows, per_aggregation=self.per_aggregation).items():
            desired.add_metric([label], want)
            ready.add_metric([label], have)
        yield desired
        yield ready


class HostsCollector(Collector):
    """Politeness per origin host as last read from Redis (`Store.host_loads`): downloads in
    flight and the end of a Retry-After pause, for the HOST_SERIES_MAX busiest hosts; the
    rest are summed (in flight) or maxed (paused until) into host="_other"."""

    def __init__(self) -> None:
        self._loads: list[HostLoad] = []
        self._read_at = -BACKLOG_MIN_AGE_SECONDS

    def update(self, loads: list[HostLoad]) -> None:
        self._loads = loads
        self._read_at = time.monotonic()

    async def refresh_async(self, db: AsyncStore) -> None:
        if time.monotonic() - self._read_at < BACKLOG_MIN_AGE_SECONDS:
            return
        try:
            loads = await db.host_loads(most=HOST_SERIES_READ)
        except StoreError as exc:
            BACKLOG_ERRORS.inc()
            log.warning("reading the hosts for /metrics failed: %s", exc)
            return
        self.update(loads)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "downloader_host_in_flight", "Downloads leased per origin host, fleet-wide.", labels=["host"]
        )
        paused = GaugeMetricFamily(
            "downloader_host_paused_until_seconds",
            "Unix time until which a Retry-After pauses the origin host fleet-wide (absent: not paused).",
            labels=["host"],
        )
        shown, rest = self._loads[:HOST_SERIES_MAX], self._loads[HOST_SERIES_MAX:]
        for load in shown:
            in_flight.add_metric([load.host], load.in_flight)
            if load.paused_until is not None:
                paused.add_metric([load.host], load.paused_until)
        if rest:
            in_flight.add_metric([OTHER], sum(load.in_flight for load in rest))
            ends = [load.paused_until for load in rest if load.paused_until is not None]
            if ends:
                paused.add_metric([OTHER], max(ends))
        yield in_flight
        yield paused
        yield GaugeMetricFamily(
            "downloader_hosts_paused",
            "Origin hosts paused by Retry-After right now (among those read).",
            value=sum(1 for load in self._loads if load.paused_until is not None),
        )


BACKLOG = BacklogCollector()
WORKERS = WorkersCollector()
HOSTS = HostsCollector()
REGISTRY.register(BACKLOG)
REGISTRY.register(WORKERS)
REGISTRY.register(HOSTS)


# --- serving ------------------------------------------------------------------------------


def configure(settings: Settings) -> None:
    BACKLOG.per_aggregation = WORKERS.per_aggregation = settings.metrics_aggregation_labels


def serve(settings: Settings, component: str) -> Any:
    """Serve /metrics on `metrics_port` (worker, notifier, operator) from a daemon thread.
    Returns the server, or None when off or when the port is taken: metrics are not worth
    a process that does not start."""
    configure(settings)
    if not settings.metrics_port:
        return None
    try:
        server, _thread = prometheus_client.start_http_server(settings.metrics_port, registry=REGISTRY)
    except OSError as exc:
        log.warning(
            "%s: cannot serve metrics on port %d (%s); running without /metrics",
            component,
            settings.metrics_port,
            exc.strerror or exc,
        )
        return None
    log.info("%s: metrics at http://0.0.0.0:%d/metrics", component, settings.metrics_port)
    return server


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return prometheus_client.generate_latest(REGISTRY), prometheus_client.CONTENT_TYPE_LATEST
