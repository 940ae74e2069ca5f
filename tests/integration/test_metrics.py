"""/metrics of real api, worker and notifier processes after a few real jobs: exact counts,
agreeing with the original's stats:* JSON, and the API showing the backlog from Redis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.procs import aggr_id, free_port, job_body
from support.servers import wait_until

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    resp = httpx.get(url, timeout=5.0, trust_env=False)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_counts_of_real_jobs_match_the_stats_json_and_the_api_shows_the_backlog(
    stack: Any, files: Any, callbacks: Any
) -> None:
    files.add_file("ok.bin", b"x" * 3000)
    files.add_file("flaky.bin", b"y" * 5000)
    files.answer("flaky.bin", 500)  # retried once, then succeeds
    api = stack.api()
    served, parked = aggr_id("metrics"), aggr_id("parked")
    # No worker runs yet: everything is queued, and the API's scrape says so.
    for name in ("ok.bin", "nope.bin", "flaky.bin"):
        api.post_job(job_body(files.url(name), served, callbacks.url))
    for _ in range(2):
        api.post_job(job_body(files.url("ok.bin"), parked, callbacks.url))
    before = scrape(f"{api.url}/metrics")
    assert get(before, "downloader_queue_depth", aggregation=served) == 3
    assert get(before, "downloader_queue_depth", aggregation=parked) == 2
    assert get(before, "downloader_in_flight", aggregation=served) == 0  # nothing leased yet
    assert get(before, "downloader_pending_jobs") == 5
    assert get(before, "downloader_jobs_enqueued_total") == 5
    assert get(before, "downloader_http_requests_total", route="/download", method="POST",
               status_class="2xx") == 5  # fmt: skip

    worker_port, notifier_port = free_port(), free_port()
    stack.worker(served, metrics_port=worker_port)
    stack.notifier(metrics_port=notifier_port)
    callbacks.wait_for_count(3)
    processor = wait_until(lambda: (s := stack.stats("processor")).get("download.response.200") == 2 and s,
                           15, "the worker's stats")  # fmt: skip
    notifier = wait_until(lambda: (s := stack.stats("notifier")).get("successfulCallbacks") == 3 and s,
                          15, "the notifier's stats")  # fmt: skip

    worker = scrape(f"http://127.0.0.1:{worker_port}/metrics")
    assert get(worker, "downloader_jobs_started_total") == 4
    assert get(worker, "downloader_jobs_succeeded_total") == 2
    assert get(worker, "downloader_jobs_failed_total", reason="http_4xx") == 1
    assert get(worker, "downloader_jobs_retried_total", reason="http_5xx") == 1
    assert total(worker, "downloader_jobs_failed_total") == 1
    assert total(worker, "downloader_jobs_retried_total") == 1
    assert get(worker, "downloader_jobs_given_back_total") == 0
    assert get(worker, "downloader_download_size_bytes_count") == 2
    assert get(worker, "downloader_download_size_bytes_sum") == 8000
    assert get(worker, "downloader_downloaded_bytes_total") == 8000
    assert get(worker, "downloader_download_duration_seconds_count", outcome="success") == 2
    assert get(worker, "downloader_download_duration_seconds_count", outcome="failure") == 2
    assert get(worker, "downloader_downloads_in_progress") == processor["workers"] == 0
    assert get(worker, "downloader_disk_paused") == 0
    # The original's JSON and the metric are one count.
    by_class = _status_classes(processor)
    assert by_class == {"2xx": 2, "4xx": 1, "5xx": 1}
    for cls, count in by_class.items():
        assert get(worker, "downloader_download_responses_total", status_class=cls) == count

    notified = scrape(f"http://127.0.0.1:{notifier_port}/metrics")
    assert get(notified, "downloader_callbacks_delivered_total", backend="http") == 3
    assert total(notified, "downloader_callbacks_delivered_total") == notifier["successfulCallbacks"]
    assert total(notified, "downloader_callbacks_failed_total") == notifier.get("failedCallbacks", 0) == 0
    assert (
        get(notified, "downloader_callback_duration_seconds_count", backend="http", outcome="delivered") == 3
    )

    def drained() -> Samples | None:
        s = scrape(f"{api.url}/metrics")
        return s if get(s, "downloader_queue_depth", aggregation=served) is None else None

    after = wait_until(drained, 10, "the API to see the served queue drained")
    assert get(after, "downloader_queue_depth", aggregation=parked) == 2
    assert get(after, "downloader_pending_jobs") == 2
    assert get(after, "downloader_http_requests_total", route="/metrics", method="GET", status_class="2xx")


def _status_classes(stats: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, count in stats.items():
        code = name.removeprefix("download.response.")
        if code.isdigit():
            out[f"{code[0]}xx"] = out.get(f"{code[0]}xx", 0) + count
    return out


def test_per_aggregation_labels_can_be_turned_off(stack: Any, files: Any, callbacks: Any) -> None:
    api = stack.api(metrics_aggregation_labels="false")
    for aggr in (aggr_id("off"), aggr_id("off")):
        api.post_job(job_body(files.url("ok.bin"), aggr, callbacks.url))
    samples = scrape(f"{api.url}/metrics")
    depth = {
        dict(labels)["aggregation"]: v for (n, labels), v in samples.items() if n == "downloader_queue_depth"
    }
    assert depth == {"_all": 2}
