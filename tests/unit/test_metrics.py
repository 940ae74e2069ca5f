"""downloader/observability/metrics.py: the failure reason classes, the bound on per-aggregation series,
the stats counters feeding their metrics, and /metrics of a process on a (taken) port."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import httpx
import pytest
import urllib3.exceptions

from downloader.config.settings import Settings
from downloader.errors import (
    AttemptPhase,
    DestinationNotAllowed,
    DownloadError,
    ImageSizeError,
    Interrupted,
    StorageError,
    status_reason,
)
from downloader.fetching import download, mime, outbound
from downloader.jobs.models import Job
from downloader.observability import metrics
from downloader.observability.stats import Stats
from downloader.worker import attempts


def value(name: str, **labels: str) -> float:
    got = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


def status(code: int, retriable: bool = False) -> DownloadError:
    return DownloadError("processing response", f"Received status code {code} X", retriable=retriable,
                         reason=status_reason(code), response_code=code)  # fmt: skip


def transport(exc: Exception) -> DownloadError:
    """What the fetcher makes of a failed request (download.request_failure)."""
    return download.request_failure(exc)


def raised(call: Callable[[], object]) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        call()
    return info.value


JOB = Job(id="AbCdEfGhIjKlMn", url="http://h/x", aggr_id="ag")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: status(404), "http_4xx"),
        (lambda: status(429, retriable=True), "http_4xx"),
        (lambda: status(500, retriable=True), "http_5xx"),
        (lambda: status(503, retriable=True), "http_5xx"),
        (lambda: status(204), "other"),  # "no content" is refused, but it is no error class of HTTP
        (
            lambda: transport(outbound.ConnectionFailed(ConnectionRefusedError("Connection refused"))),
            "network",
        ),
        (
            lambda: download.transport_error(
                AttemptPhase.DOWNLOADING_FILE,
                urllib3.exceptions.ProtocolError(
                    "Connection broken", urllib3.exceptions.IncompleteRead(3, 7)
                ),
                200,
            ),
            "network",
        ),
        (
            lambda: transport(
                outbound.ReadTimeout(urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out."))
            ),
            "timeout",
        ),
        (lambda: download._deadline_exceeded(200), "timeout"),
        (lambda: transport(outbound.TLSError(urllib3.exceptions.SSLError("bad cert"))), "tls"),
        (lambda: download._too_large(10, 200), "too_large"),
        (lambda: raised(lambda: download._check_mime(PNG, mime.parse_pattern("text/*"), 200)), "mime"),
        (lambda: raised(lambda: attempts._pattern(Job(id="x", url="u", aggr_id="a", mime_type="["))), "mime"),
        (lambda: attempts._image_failure(ImageSizeError("not an image"), 200), "image"),
        (
            lambda: transport(DestinationNotAllowed("destination address not allowed: 10.0.0.1")),
            "destination_not_allowed",
        ),
        (lambda: attempts._storage_failure(JOB, StorageError("disk gone"), 200), "storage"),
        (
            lambda: attempts._storage_failure(
                Job(id="x", url="u", aggr_id="a", s3_bucket="b"), StorageError("no"), 0
            ),
            "storage",
        ),
        (
            lambda: download._storage_error(AttemptPhase.WRITING_TMP_FILE, OSError(28, "No space left"), 0),
            "storage",
        ),
        (lambda: transport(outbound.InvalidRequest("Invalid URL 'x'")), "other"),
    ],
)
def test_failure_reason_classes(make: Callable[[], DownloadError], reason: str) -> None:
    """Each kind of failure gets its reason where it is raised; the metric label is that field."""
    error = make()
    assert error.reason == reason
    assert metrics.failure_reason(error) == reason
    assert reason in metrics.FAILURE_REASONS


def test_status_classes_and_backend_labels_are_bounded() -> None:
    assert [metrics.status_class(c) for c in (200, 302, 404, 503, 0, 999)] == [
        "2xx", "3xx", "4xx", "5xx", "other", "other"
    ]  # fmt: skip
    assert [metrics.backend_label(b) for b in ("http", "kafka", "sqs", "", "https://evil/x")] == [
        "http", "kafka", "sqs", "none", "other"
    ]  # fmt: skip


# --- the bound on per-aggregation series ------------------------------------------------


def test_the_largest_aggregations_keep_their_series_and_the_rest_is_summed() -> None:
    rows = {f"a{i:02d}": (i, 1) for i in range(30)}  # a29 has the largest backlog
    out = metrics.bounded(rows, limit=5)
    assert list(out) == ["a29", "a28", "a27", "a26", "a25", metrics.OTHER]
    assert out[metrics.OTHER] == (sum(range(25)), 25)
    # nothing is lost: the totals over the label are exact
    for i in (0, 1):
        assert sum(v[i] for v in out.values()) == sum(v[i] for v in rows.values())


def test_ties_are_ranked_by_name_and_few_aggregations_need_no_other() -> None:
    assert list(metrics.bounded({"b": (1,), "a": (1,), "c": (0,)}, limit=2)) == ["a", "b", metrics.OTHER]
    assert metrics.bounded({"x": (3, 0)}, limit=2) == {"x": (3, 0)}
    assert metrics.bounded({}) == {}


def test_without_aggregation_labels_one_series_holds_the_sums() -> None:
    rows = {"a": (1, 2), "b": (3, 4)}
    assert metrics.bounded(rows, per_aggregation=False) == {metrics.ALL: (4, 6)}


def test_series_never_exceed_the_limit_plus_one_however_many_aggregations() -> None:
    collector = metrics.BacklogCollector()
    collector.update(metrics.Backlog({f"q{i}": i for i in range(5000)}, {"q1": 1, "lone": 2}, callbacks=7))
    families = {f.name: f for f in collector.collect()}
    depth = families["downloader_queue_depth"].samples
    assert len(depth) == metrics.AGGREGATION_SERIES_MAX + 1
    assert sum(s.value for s in depth) == sum(range(5000))
    assert sum(s.value for s in families["downloader_in_flight"].samples) == 3
    assert families["downloader_pending_jobs"].samples[0].value == sum(range(5000))
    assert families["downloader_aggregations_with_backlog"].samples[0].value == 5001
    assert families["downloader_callbacks_pending"].samples[0].value == 7


def test_operator_workers_are_bounded_forgotten_and_expire() -> None:
    workers = metrics.WorkersCollector()
    for i in range(25):
        workers.record(f"agg-{i:02d}", desired=i % 4, ready=i % 3)
    workers.forget("agg-03")
    desired, ready = list(workers.collect())
    labels = [s.labels["aggregation"] for s in desired.samples]
    assert len(labels) == metrics.AGGREGATION_SERIES_MAX + 1 and "agg-03" not in labels
    assert sum(s.value for s in desired.samples) == sum(i % 4 for i in range(25)) - 3
    assert sum(s.value for s in ready.samples) == sum(i % 3 for i in range(25)) - 0
    workers._rows = {
        a: (d, r, at - metrics.WORKERS_STALE_SECONDS - 1) for a, (d, r, at) in workers._rows.items()
    }
    assert [f.samples for f in workers.collect()] == [[], []]


# --- one source: the stats JSON and the metrics ---------------------------------------


def test_stats_counts_feed_their_metrics() -> None:
    before = {
        "4xx": value("downloader_download_responses_total", status_class="4xx"),
        "blocked": value("downloader_destination_blocked_total", component="notifier"),
        "deleted": value("downloader_file_deletions_total", result="deleted"),
        "busy": value("downloader_downloads_in_progress"),
    }
    stats = Stats("notifier")
    stats.incr("download.response.404")
    stats.incr("download.response.410", 2)
    stats.incr("download.response.mime")  # a failure reason, not a status: no status class
    stats.incr("destinationNotAllowed")
    stats.incr("reaperSuccessfulDeletions", 3)
    stats.gauge_add("workers", 2, "maxWorkers")
    stats.gauge_add("workers", -1)
    assert value("downloader_download_responses_total", status_class="4xx") - before["4xx"] == 3
    assert value("downloader_destination_blocked_total", component="notifier") - before["blocked"] == 1
    assert value("downloader_file_deletions_total", result="deleted") - before["deleted"] == 3
    assert value("downloader_downloads_in_progress") - before["busy"] == 1
    assert stats.snapshot() == {"alive": 1, "download.response.404": 1, "download.response.410": 2,
                                "download.response.mime": 1, "destinationNotAllowed": 1,
                                "reaperSuccessfulDeletions": 3, "workers": 1, "maxWorkers": 2}  # fmt: skip


def test_an_attempt_is_counted_once_by_its_outcome() -> None:
    names = ("succeeded", "given_back")
    before = {n: value(f"downloader_jobs_{n}_total") for n in names}
    failed = value("downloader_jobs_failed_total", reason="http_4xx")
    retried = value("downloader_jobs_retried_total", reason="http_5xx")
    size = value("downloader_download_size_bytes_count")
    metrics.attempt_done(None, terminal=False, written=True, size=1234, seconds=0.2)
    metrics.attempt_done(status(404), terminal=True, written=True, size=0, seconds=0.1)
    metrics.attempt_done(status(500, True), terminal=False, written=True, size=0, seconds=0.1)
    metrics.attempt_done(Interrupted("shutting down"), terminal=False, written=True, size=0, seconds=1)
    metrics.attempt_done(None, terminal=False, written=False, size=9, seconds=1)  # lease lost
    assert value("downloader_jobs_succeeded_total") - before["succeeded"] == 1
    assert value("downloader_jobs_given_back_total") - before["given_back"] == 2
    assert value("downloader_jobs_failed_total", reason="http_4xx") - failed == 1
    assert value("downloader_jobs_retried_total", reason="http_5xx") - retried == 1
    assert value("downloader_download_size_bytes_count") - size == 1


# --- serving ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_metrics_and_is_off_at_port_zero() -> None:
    assert metrics.serve(Settings(metrics_port=0), "worker") is None
    port = free_port()
    server = metrics.serve(Settings(metrics_port=port), "worker")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'downloader_build_info{version="' in text
    assert "# TYPE downloader_jobs_failed_total counter" in text
    assert "downloader_process_cpu_seconds_total" in text


def test_a_taken_port_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="downloader.observability.metrics"):
            assert metrics.serve(Settings(metrics_port=port), "notifier") is None
    assert f"notifier: cannot serve metrics on port {port}" in caplog.text
    assert not [t for t in threading.enumerate() if "prometheus" in t.name.lower()]


# --- the operator -------------------------------------------------------------------------


def test_reconciles_are_counted_and_errors_by_cause_keeping_kopfs_handler_id() -> None:
    import asyncio

    from downloader.cluster.kube import ClusterError
    from downloader.errors import StoreError
    from downloader.operator.handlers import _counted

    raised: list[Exception] = [StoreError("down"), ClusterError("forbidden"), ValueError("bug")]

    async def reconcile(**kwargs: object) -> None:
        if raised:
            raise raised.pop(0)

    counted = _counted(reconcile)
    assert counted.__qualname__ == reconcile.__qualname__  # kopf's id of the handler
    before = value("downloader_operator_reconciles_total")
    causes = {
        c: value("downloader_operator_reconcile_errors_total", cause=c)
        for c in ("redis", "kubernetes", "other")
    }
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 -- re-raised as is, whatever it is
            asyncio.run(counted(body={}))
    asyncio.run(counted(body={}))
    assert value("downloader_operator_reconciles_total") - before == 4
    for cause, was in causes.items():
        assert value("downloader_operator_reconcile_errors_total", cause=cause) - was == 1
