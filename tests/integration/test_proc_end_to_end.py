"""End to end through real processes: api, worker and notifier on a real Redis.

Ports the original's end-to-end suite (reference 8.12) and the request-header, reaper,
default-aggregation and notifier tests (8.6, 8.10, 8.11), plus the fixes it promises:
download_url that does not grow, 3xx/204 as failures, size and time bounds, GET /jobs.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.procs import DOWNLOAD_URL_BASE, PAYLOAD_KEYS, Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until

from downloader.jobs.models import Aggregation, Job
from downloader.store import Store, keys

pytestmark = pytest.mark.integration


def download_url(job_id: str) -> str:
    return f"{DOWNLOAD_URL_BASE}/{job_id[:3]}/{job_id}"


def webp_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="WEBP")
    return out.getvalue()


# --- the original's end-to-end tests (reference 8.12) -------------------------------------


def test_an_existing_resource_is_stored_byte_for_byte_and_the_callback_says_where(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    url = files.url("sample-1.jpg")
    job_id = api.post_job(
        {
            "url": url,
            "aggr_id": aggr_id(),
            "aggr_limit": 1,
            "mime_type": "!image/vnd.adobe.photoshop,image/jpeg",
            "callback_url": callbacks.url,
            "extra": "foobar",
        }
    )

    payload = callbacks.wait_for(job_id)

    assert list(payload) == PAYLOAD_KEYS
    assert payload == {
        "success": True,
        "error": "",
        "extra": "foobar",
        "image_size": "",
        "resource_url": url,
        "download_url": download_url(job_id),
        "job_id": job_id,
        "response_code": 200,
        "delivered": True,
        "delivery_error": "",
        "sha256": hashlib.sha256(files.content("sample-1.jpg")).hexdigest(),
        "size": len(files.content("sample-1.jpg")),
        "content_type": "image/jpeg",
        "final_url": url,
        "attempts": 1,
    }
    stored = stack.storage_root / payload["download_url"][len(DOWNLOAD_URL_BASE) + 1 :]
    assert stored.read_bytes() == files.content("sample-1.jpg")
    assert callbacks.for_job(job_id)[0].headers.get("Content-Type") == "application/json"


def test_without_syncing_files_a_download_is_stored_whole_all_the_same(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(DOWNLOADER_SYNC_FILES="false")
    job_id = api.post_job(job_body(files.url("sample-1.jpg"), aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is True and payload["size"] == len(files.content("sample-1.jpg"))
    stored = stack.storage_root / payload["download_url"][len(DOWNLOAD_URL_BASE) + 1 :]
    assert stored.read_bytes() == files.content("sample-1.jpg")
    assert list((stack.tmp_path / "tmp").glob("*")) == []


def cpus_of_every_thread(pid: int) -> set[str]:
    threads = list(Path(f"/proc/{pid}/task").iterdir())
    assert len(threads) > 5  # the pools' threads are there, started after the pinning
    return {(t / "status").read_text().split("Cpus_allowed_list:")[1].split()[0] for t in threads}


def test_a_worker_and_a_notifier_pinned_to_one_cpu_run_every_thread_there_and_deliver(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    cpu = max(os.sched_getaffinity(0))
    api, worker, notifier = stack.all_three(
        DOWNLOADER_WORKER_CPUS=str(cpu), DOWNLOADER_NOTIFIER_CPUS=str(cpu)
    )
    job_id = api.post_job(job_body(files.url("sample-1.jpg"), aggr_id(), callbacks.url))

    assert callbacks.wait_for(job_id)["success"] is True
    assert cpus_of_every_thread(worker.pid) == cpus_of_every_thread(notifier.pid) == {str(cpu)}
    api_cpus = Path(f"/proc/{api.pid}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    assert api_cpus != str(cpu) or len(os.sched_getaffinity(0)) == 1  # only those two are pinned


def test_a_worker_asked_for_a_cpu_it_cannot_have_says_so_in_one_line(stack: Stack) -> None:
    worker = stack.worker(wait=False, DOWNLOADER_WORKER_CPUS="4095")
    wait_until(lambda: worker.returncode is not None, timeout=30, message="the worker to exit")
    assert worker.returncode != 0
    assert "DOWNLOADER_WORKER_CPUS='4095'" in worker.output() and "Traceback" not in worker.output()


def test_a_missing_resource_fails_with_404_not_found_and_no_download_url(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    url = files.url("does-not-exist.jpg")
    job_id = api.post_job(job_body(url, aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert "404 Not Found" in payload["error"]
    assert payload["download_url"] == ""
    assert payload["resource_url"] == url
    assert payload["extra"] == ""
    assert payload["job_id"] == job_id
    assert payload["response_code"] == 404
    assert len(files.seen("does-not-exist.jpg")) == 1, "a 404 is terminal: no retry"
    assert not stack.stored_path(job_id).exists()


def test_a_mime_type_mismatch_fails_at_once_with_expected_mime_type(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url, mime_type="image/jpeg"))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert "Expected mime-type" in payload["error"]
    assert "image/png" in payload["error"]
    assert payload["download_url"] == ""
    assert len(files.seen("tiny.png")) == 1, "a mime mismatch is terminal: no retry"
    assert not stack.stored_path(job_id).exists()


def test_image_size_is_measured_for_png_jpeg_bmp_and_webp_and_empty_for_pdf(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    files.add_file("small.webp", webp_bytes(7, 5))
    aggr = aggr_id()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("tiny.png", {}, "10x10"),
        ("sample-1.jpg", {}, "420x315"),
        ("tiny.bmp", {}, "10x10"),  # the original measured only jpeg/png/gif
        ("small.webp", {}, "7x5"),
        ("tiny.pdf", {}, ""),
        ("tiny.pdf", {"mime_type": "application/pdf"}, ""),
    ]
    ids = [
        api.post_job(job_body(files.url(name), aggr, callbacks.url, extract_image_size=True, **extra))
        for name, extra, _ in cases
    ]

    got = [(name, callbacks.wait_for(job_id)) for (name, _, _), job_id in zip(cases, ids, strict=True)]

    assert [(name, p["success"], p["error"]) for name, p in got] == [(n, True, "") for n, _, _ in cases]
    assert [(name, p["image_size"]) for name, p in got] == [(n, size) for n, _, size in cases]


def test_transient_5xx_answers_are_retried_until_the_file_arrives(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    files.add_file("flaky.jpg", files.content("sample-1.jpg"))
    files.answer("flaky.jpg", 500)
    files.answer("flaky.jpg", 503)
    job_id = api.post_job(job_body(files.url("flaky.jpg"), aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is True
    assert payload["error"] == ""
    assert payload["response_code"] == 200
    assert payload["download_url"] == download_url(job_id)
    assert [r.status for r in files.seen("flaky.jpg")] == [500, 503, 200]
    assert stack.stored_path(job_id).read_bytes() == files.content("sample-1.jpg")


def test_with_max_retries_0_a_500_fails_after_one_attempt(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    files.add_file("once.jpg", files.content("sample-1.jpg"))
    files.answer("once.jpg", 500)
    job_id = api.post_job(job_body(files.url("once.jpg"), aggr_id(), callbacks.url, max_retries=0))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert "500 Internal Server Error" in payload["error"]
    assert "retriable: true" in payload["error"]
    assert payload["response_code"] == 500
    assert [r.status for r in files.seen("once.jpg")] == [500]


def test_with_max_retries_1_two_500s_fail_after_two_attempts(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    files.add_file("twice.jpg", files.content("sample-1.jpg"))
    files.answer("twice.jpg", 500)
    files.answer("twice.jpg", 500)
    job_id = api.post_job(job_body(files.url("twice.jpg"), aggr_id(), callbacks.url, max_retries=1))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert payload["response_code"] == 500
    assert [r.status for r in files.seen("twice.jpg")] == [500, 500]


def test_a_body_cut_short_is_an_unexpected_eof_retried_until_attempts_run_out(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    files.add_file("cut.jpg", files.content("sample-1.jpg"))
    for _ in range(3):
        files.answer("cut.jpg", 200, {"Content-Length": "42"}, b"")
    # The read error wins over the (impossible) mime check, as in the original.
    job_id = api.post_job(
        job_body(files.url("cut.jpg"), aggr_id(), callbacks.url, mime_type="type/missmatch")
    )

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert "unexpected EOF" in payload["error"]
    assert "Expected mime-type" not in payload["error"]
    assert len(files.seen("cut.jpg")) == 3, "1 attempt + the default 2 retries"


def test_stats_count_worker_pools_and_workers_of_two_aggregations(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    ids = [
        api.post_job(job_body(files.url("sample-1.jpg"), aggr, callbacks.url))
        for aggr in (aggr_id("statsfoo"), aggr_id("statsbar"))
    ]
    for job_id in ids:
        assert callbacks.wait_for(job_id)["success"] is True

    # Stats are published every interval: wait for a snapshot taken after both downloads ended.
    processor = wait_until(
        lambda: (s := api.http.get("/stats/processor").json()).get("download.response.200", 0) >= 2 and s,
        10,
        "processor stats counting both downloads",
    )
    assert processor["alive"] == 1
    assert processor["spawnedWorkers"] >= 2 and processor["spawnedWorkerPools"] >= 2
    assert processor["maxWorkerPools"] <= processor["spawnedWorkerPools"]
    assert processor["workerPools"] <= processor["spawnedWorkerPools"]
    assert processor["maxWorkers"] <= processor["spawnedWorkers"]
    assert processor["workers"] <= processor["spawnedWorkers"]
    assert processor.get("download.response.200", 0) >= 2
    notifier = wait_until(
        lambda: (s := api.http.get("/stats/notifier").json()).get("successfulCallbacks", 0) >= 2 and s,
        10,
        "notifier stats counting both callbacks",
    )
    assert notifier["alive"] == 1


def test_a_load_of_60_jobs_from_20_clients_gives_exact_success_and_failure_counts(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    aggrs = [aggr_id("load") for _ in range(3)]
    bodies: list[dict[str, Any]] = []
    for i in range(20):
        aggr = aggrs[i % 3]
        common = {"aggr_limit": 5, "callback_url": callbacks.url, "extra": "foo"}
        bodies.append(
            {"url": files.url("load-test.jpg"), "aggr_id": aggr, "mime_type": "image/jpeg", **common}
        )
        bodies.append(
            {"url": files.url("load-test.jpg"), "aggr_id": aggr, "mime_type": "image/png", **common}
        )
        bodies.append({"url": files.url(f"missing-{i}.jpg"), "aggr_id": aggr, **common})
    posted: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def poster(mine: list[dict[str, Any]]) -> None:
        try:
            for body in mine:
                job_id = api.post_job(body)
                with lock:
                    posted.append(job_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=poster, args=(bodies[i::20],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(set(posted)) == 60

    delivered = callbacks.wait_for_count(60, timeout=60)

    payloads = [c.payload for c in delivered]
    by_job = {p["job_id"]: p for p in payloads}
    assert set(by_job) == set(posted), "every job has a callback"
    successes = [p for p in by_job.values() if p["success"]]
    failures = [p for p in by_job.values() if not p["success"]]
    assert (len(successes), len(failures)) == (20, 40)
    assert all(p["extra"] == "foo" for p in by_job.values())
    assert all(p["download_url"] == download_url(p["job_id"]) for p in successes)
    assert all(p["download_url"] == "" for p in failures)
    assert sum("Expected mime-type" in p["error"] for p in failures) == 20
    assert sum("404 Not Found" in p["error"] for p in failures) == 20


# --- request headers (reference 8.11) -------------------------------------------------------


def _headers_without_host(seen: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in seen.items() if k.lower() != "host"}


def test_default_request_headers_are_sent_exactly(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    defaults = {"User-Agent": "Downloader-Agent", "Accept": "*/*", "Accept-Encoding": "gzip,deflate,br"}
    api, _, _ = stack.all_three(default_request_headers=defaults)
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))

    assert callbacks.wait_for(job_id)["success"] is True

    (request,) = files.seen("tiny.png")
    assert _headers_without_host(request.header_dict()) == {k.lower(): v for k, v in defaults.items()}


def test_job_request_headers_override_the_defaults_per_key(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    defaults = {"User-Agent": "Downloader v1", "Accept": "*/*", "X-Fleet": "blue"}
    mine = {
        "accept": "application/html,application/xhtml;q=0.8,*/*",  # another case, same header
        "Accept-Encoding": "gzip,deflate,br",
        "User-Agent": "DL-Agent v1.0",
    }
    api, _, _ = stack.all_three(default_request_headers=defaults)
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url, request_headers=mine))

    assert callbacks.wait_for(job_id)["success"] is True

    (request,) = files.seen("tiny.png")
    expected = {k.lower(): v for k, v in mine.items()} | {"x-fleet": "blue"}
    assert _headers_without_host(request.header_dict()) == expected


# --- processor tests (reference 8.10) -------------------------------------------------------


def test_a_job_whose_aggregation_hash_is_gone_runs_under_the_default_limit_of_4(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    aggr = aggr_id("noaggr")
    ids = [
        api.post_job(
            job_body(
                files.url("sample-1.jpg", aggr=aggr, i=i, delay=0.1, chunk=4096), aggr, callbacks.url, limit=1
            )
        )
        for i in range(8)
    ]
    assert stack.db.delete(f"aggr:{aggr}") == 1
    stack.worker()
    stack.notifier()

    payloads = [callbacks.wait_for(job_id, timeout=30) for job_id in ids]

    assert all(p["success"] for p in payloads)
    assert files.peak_downloads_for(aggr) == 4, "the original's default limit, not the 1 of the deleted hash"


def test_a_delivered_jobs_file_and_hash_are_deleted_after_the_deletion_delay(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, notifier = stack.all_three(deletion_delay_seconds=1)
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    stored = stack.stored_path(job_id)

    wait_until(stored.exists, 20, "the stored file")
    assert callbacks.wait_for(job_id)["success"] is True

    # Deleted as soon as the notifier has the 2xx (not after the deletion delay); the server
    # records the callback a moment before the notifier reads its answer, hence a short wait.
    wait_until(lambda: not stack.db.exists(f"job:{job_id}"), 2, "the delivered job's hash to go at once")
    wait_until(lambda: not stored.exists(), 15, "the reaper to delete the stored file")
    wait_until(lambda: stack.db.zscore("JobDeletionQueue", job_id) is None, 5, "the deletion entry to go")
    assert not stack.db.exists(f"job:{job_id}")
    wait_until(lambda: stack.stats("notifier").get("reaperSuccessfulDeletions", 0) >= 1, 5, "reaper stats")
    notifier.check_alive()
    # Nothing of the job is left: no side key, no lease, and its idle aggregation is gone too.
    # (The dashboard's heartbeats, per-minute counts and recently seen hosts are no job's, nor
    # is the adoption sweep's turn, nor a claim's receipt; they expire by themselves.)
    dashboard = (
        keys.INSTANCES_PREFIX,
        keys.THROUGHPUT_PREFIX,
        keys.LATENCY_PREFIX,
        keys.ADOPTION_LOCK,
        keys.CLAIM_RECEIPT_PREFIX,
        keys.HOSTS,
    )
    wait_until(
        lambda: (
            {k for k in stack.db.scan_iter() if not k.startswith(dashboard)}
            <= {"stats:processor", "stats:notifier"}
        ),
        5,
        "Redis to hold nothing but stats",
    )


# --- notifier tests (reference 8.6) -----------------------------------------------------------


def test_an_undefined_callback_backend_is_counted_and_the_callback_fails_after_its_attempts(
    stack: Stack, files: FileServer
) -> None:
    api, _, _ = stack.all_three()
    aggr = aggr_id()
    body = job_body(files.url("tiny.png"), aggr) | {"callback_type": "foo", "callback_dst": "somewhere"}
    # The API refuses the unknown type at the door now; a job the original service queued
    # (written straight to Redis, as here) still meets the notifier's undefined backend.
    refused = api.http.post("/download", json=body)
    assert refused.status_code == 400 and 'Unknown callback_type "foo"' in refused.text
    job = Job(id="", url=files.url("tiny.png"), aggr_id=aggr, callback_type="foo", callback_dst="somewhere")
    job_id = Store.from_url(stack.redis_url).enqueue_many([(job, Aggregation(aggr, 4))])[0]

    job = wait_until(
        lambda: (h := stack.db.hgetall(f"job:{job_id}")).get("CallbackState") == "Failed" and h,
        20,
        "the callback to fail",
    )

    assert job["DownloadState"] == "Success"
    assert job["CallbackCount"] == "2"
    assert job["CallbackMeta"].startswith("Undefined backend foo for job Job{ID:" + job_id)
    stats = wait_until(
        lambda: (s := stack.stats("notifier")).get("undefinedBackendWithCallback") == 2 and s,
        5,
        "undefinedBackendWithCallback == 2",
    )
    assert stats["failedCallbacks"] == 1


def test_a_callback_to_a_closed_port_is_retried_then_failed_and_delivered_after_post_retry(
    stack: Stack, files: FileServer
) -> None:
    api, _, _ = stack.all_three()
    port = free_port()  # nobody listens here yet
    dst = f"http://127.0.0.1:{port}/callback"
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), dst))

    job = wait_until(
        lambda: (h := stack.db.hgetall(f"job:{job_id}")).get("CallbackState") == "Failed" and h,
        20,
        "the callback to fail",
    )
    assert job["CallbackCount"] == "2"
    assert job["CallbackMeta"].startswith(f'Post "{dst}"')
    assert stack.db.zscore("CallbackQueue", job_id) is None
    view = api.job(job_id).json()
    assert view["state"] == "callback_failed"
    assert view["callback"]["attempts"] == 2

    late = CallbackServer()
    late.start(port)
    try:
        resp = api.http.post(f"/retry/{job_id}")
        assert resp.status_code == 204, resp.text
        payload = late.wait_for(job_id)
    finally:
        late.stop()

    assert payload["success"] is True
    assert payload["download_url"] == download_url(job_id)
    # Shown as delivered until its file is deleted (the deletion delay), no longer as Failed.
    wait_until(lambda: api.job(job_id).json()["state"] == "delivered", 10, "the job to show as delivered")
    assert not stack.db.exists(f"job:{job_id}"), "its hash goes at delivery, as in the original"


def test_download_url_does_not_grow_when_callbacks_are_retried(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    callbacks.answer_next([500, 500])  # both attempts fail: Failed, then POST /retry
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    wait_until(
        lambda: stack.db.hget(f"job:{job_id}", "CallbackState") == "Failed", 20, "the callback to fail twice"
    )
    assert api.http.post(f"/retry/{job_id}").status_code == 204

    payload = callbacks.wait_for(job_id)

    sent = [c.payload["download_url"] for c in callbacks.for_job(job_id)]
    assert [c.answered for c in callbacks.for_job(job_id)] == [500, 500, 200]
    assert payload["download_url"] == download_url(job_id)
    assert sent == [download_url(job_id)] * 3


def test_a_callback_answered_500_then_200_is_delivered_with_the_same_download_url(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    callbacks.answer_next([500])
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert [c.answered for c in callbacks.for_job(job_id)] == [500, 200]
    assert payload["download_url"] == download_url(job_id)
    assert callbacks.for_job(job_id)[0].payload == payload


# --- bounded and honest downloads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers"),
    [(302, {}), (304, {}), (204, {})],
    ids=["302-without-location", "304", "204"],
)
def test_a_3xx_that_was_not_followed_or_a_204_is_a_failure_not_an_empty_file(
    stack: Stack, files: FileServer, callbacks: CallbackServer, status: int, headers: dict[str, str]
) -> None:
    api, _, _ = stack.all_three()
    name = f"odd-{status}.jpg"
    files.add_file(name, files.content("tiny.png"))
    files.answer(name, status, headers)
    job_id = api.post_job(job_body(files.url(name), aggr_id(), callbacks.url, max_retries=0))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert payload["response_code"] == status
    assert str(status) in payload["error"]
    assert payload["download_url"] == ""
    assert not stack.stored_path(job_id).exists()


def test_a_redirect_with_a_location_is_followed(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    files.answer("moved.png", 302, {"Location": files.url("tiny.png")})
    job_id = api.post_job(job_body(files.url("moved.png"), aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is True
    assert payload["response_code"] == 200
    assert stack.stored_path(job_id).read_bytes() == files.content("tiny.png")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
def test_a_body_larger_than_the_maximum_fails_terminally(
    stack: Stack, files: FileServer, callbacks: CallbackServer, declared: bool
) -> None:
    api, _, _ = stack.all_three(max_download_bytes=10_000)
    query = {} if declared else {"nolength": 1}
    job_id = api.post_job(job_body(files.url("sample-1.jpg", **query), aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is False
    assert "retriable: false" in payload["error"]
    assert "10000" in payload["error"]
    assert len(files.seen("sample-1.jpg")) == 1, "too large is terminal: no retry"
    assert not stack.stored_path(job_id).exists()
    assert not any(stack.tmp_dir.iterdir()), "no temp file left behind"


@pytest.mark.parametrize(
    ("query", "job_timeout", "settings", "code"),
    [
        ({"hold": 20}, 1, {}, 0),
        ({"delay": 0.3, "chunk": 100}, 1, {}, 200),
        ({"delay": 0.3, "chunk": 100}, None, {"download_timeout_seconds": 1}, 200),
    ],
    ids=["no-answer-job-timeout", "trickling-body-job-timeout", "trickling-body-default-timeout"],
)
def test_a_1s_download_timeout_against_a_stalled_server_fails_the_job_and_frees_the_slot(
    stack: Stack,
    files: FileServer,
    callbacks: CallbackServer,
    query: dict[str, Any],
    job_timeout: int | None,
    settings: dict[str, Any],
    code: int,
) -> None:
    api, _, _ = stack.all_three(**settings)
    files.add_file("slow.jpg", files.content("sample-1.jpg"))  # 32 KB: 100 s at 100 B / 0.3 s
    aggr = aggr_id("stall")
    extra = {} if job_timeout is None else {"download_timeout": job_timeout}
    started = time.monotonic()
    stalled = api.post_job(
        job_body(files.url("slow.jpg", **query), aggr, callbacks.url, limit=1, max_retries=1, **extra)
    )
    after = api.post_job(job_body(files.url("tiny.png"), aggr, callbacks.url, limit=1))

    payload = callbacks.wait_for(stalled, timeout=15)
    elapsed = time.monotonic() - started

    assert payload["success"] is False
    assert "timeout" in payload["error"].lower()
    assert payload["response_code"] == code
    assert len(files.seen("slow.jpg")) == 2, "1 attempt + 1 retry"
    assert elapsed < 8, f"two 1 s attempts took {elapsed:.1f}s: the timeout is not enforced"
    assert not stack.stored_path(stalled).exists()
    assert callbacks.wait_for(after, timeout=10)["success"] is True, "the aggregation's only slot came back"


def test_408_and_429_are_retried_like_5xx(stack: Stack, files: FileServer, callbacks: CallbackServer) -> None:
    api, _, _ = stack.all_three()
    files.add_file("busy.png", files.content("tiny.png"))
    files.answer("busy.png", 429, {"Retry-After": "1"})
    files.answer("busy.png", 408)
    job_id = api.post_job(job_body(files.url("busy.png"), aggr_id(), callbacks.url))

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is True
    assert [r.status for r in files.seen("busy.png")] == [429, 408, 200]


def test_a_mime_type_list_accepts_any_of_its_types_and_negations_must_all_hold(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    aggr = aggr_id("mime")
    cases = [
        ("tiny.png", "image/jpeg,image/png", True),  # the original required both: never true
        ("sample-1.jpg", "image/jpeg,image/png", True),
        ("tiny.pdf", "image/jpeg,image/png", False),
        ("tiny.png", "!image/vnd.adobe.photoshop,image/*", True),
        ("tiny.png", "image/*,!image/png", False),
        ("tiny.png", "image/png,", True),  # an empty item is ignored (a trailing comma failed all)
    ]
    ids = [
        api.post_job(job_body(files.url(name, i=i), aggr, callbacks.url, mime_type=pattern))
        for i, (name, pattern, _) in enumerate(cases)
    ]

    got = [callbacks.wait_for(job_id)["success"] for job_id in ids]

    assert got == [ok for _, _, ok in cases]


# --- GET /jobs/{id} ----------------------------------------------------------------------------


def test_get_job_shows_attempts_errors_and_times_while_waiting_for_a_retry_and_delivered_after_delivery(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(retry_backoff_seconds=60)
    files.add_file("later.jpg", files.content("tiny.png"))
    files.answer("later.jpg", 503)
    waiting = api.post_job(job_body(files.url("later.jpg"), aggr_id(), callbacks.url, max_retries=2))
    done = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))

    view = wait_until(
        lambda: (v := api.job(waiting).json())["state"] == "waiting_retry" and v,
        15,
        "the job to wait for a retry",
    )

    assert view["id"] == waiting
    assert view["download"]["state"] == "Pending"
    assert view["download"]["attempts"] == 1
    assert view["download"]["max_retries"] == 2
    assert view["download"]["response_code"] == 503
    assert view["download"]["error"] == "", "the original keeps DownloadMeta empty while waiting"
    assert len(view["errors"]) == 1
    assert "503 Service Unavailable" in view["errors"][0]
    assert view["callback"] == {
        "state": "",
        "attempts": 0,
        "error": "",
        "backend": "http",
        "destination": callbacks.url,
        "delivered_at": None,
    }
    for stamp in ("created_at", "updated_at", "started_at", "next_attempt_at"):
        assert view[stamp], f"{stamp} is not set"
    assert view["finished_at"] is None
    assert view["lease_expires_at"] is None
    assert view["created_at"] <= view["started_at"] <= view["updated_at"] < view["next_attempt_at"]

    assert callbacks.wait_for(done)["success"] is True
    delivered = wait_until(
        lambda: (v := api.job(done).json())["state"] == "delivered" and v, 10, "a delivered job to show so"
    )
    assert delivered["callback"]["state"] == "Delivered" and delivered["callback"]["delivered_at"]
    assert api.job("NoSuchJob00000").status_code == 404


# --- more of the original's processor and notifier tests (8.6, 8.10) ------------------------------


def test_the_reaper_deletes_due_files_whether_or_not_the_job_hash_still_exists(stack: Stack) -> None:
    stack.notifier()
    for job_id in ("RIPinRedis", "RIPGhost"):
        path = stack.stored_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"bye")
    stack.db.hset("job:RIPinRedis", mapping={"ID": "RIPinRedis", "URL": "http://x/y", "AggrID": "a"})
    stack.db.zadd("JobDeletionQueue", {"RIPinRedis": 0, "RIPGhost": 0})

    wait_until(
        lambda: not stack.stored_path("RIPinRedis").exists() and not stack.stored_path("RIPGhost").exists(),
        10,
        "both files to be deleted",
    )
    wait_until(lambda: stack.db.zcard("JobDeletionQueue") == 0, 5, "the deletion queue to empty")
    assert not stack.db.exists("job:RIPinRedis", "job:RIPGhost")


def test_a_callback_the_original_left_in_progress_is_delivered_and_a_failed_one_stays_failed(
    stack: Stack, callbacks: CallbackServer
) -> None:
    # The original's notifier re-queued InProgress callbacks when it started (its "rogue
    # callbacks"): a job it was delivering when it died must not be stranded by the switch.
    rogue, failed = "RogueCallback1", "FailedCallbck1"
    for job_id, state in ((rogue, "InProgress"), (failed, "Failed")):
        stack.db.hset(
            f"job:{job_id}",
            mapping={
                "ID": job_id,
                "URL": "http://example.invalid/a.png",
                "AggrID": "gone",
                "MaxRetries": "null",
                "DownloadState": "Success",
                "DownloadCount": "1",
                "CallbackState": state,
                "CallbackURL": callbacks.url,
                "DownloadURL": DOWNLOAD_URL_BASE,
                "CallbackCount": "1",
                "ResponseCode": "200",
                "RequestHeaders": "null",
            },
        )
    stack.notifier()

    payload = callbacks.wait_for(rogue, timeout=10)

    assert payload["success"] is True
    assert payload["download_url"] == download_url(rogue)
    assert stack.db.hget(f"job:{failed}", "CallbackState") == "Failed"
    assert callbacks.for_job(failed) == []


def test_a_callback_queued_for_a_vanished_job_is_dropped_without_leaving_a_hash_behind(
    stack: Stack, callbacks: CallbackServer
) -> None:
    stack.notifier()
    stack.db.zadd("CallbackQueue", {"VanishedJob001": time.time()})

    wait_until(lambda: stack.db.zcard("CallbackQueue") == 0, 10, "the callback to be taken")
    wait_until(lambda: stack.db.zcard("CallbackInflight") == 0, 10, "the claim to be dropped")
    assert stack.db.hgetall("job:VanishedJob001") == {}, "a job hash without ID was created"
    assert callbacks.all() == []


def test_a_worker_for_named_aggregations_leaves_the_others_alone(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    stack.notifier()
    mine, other = aggr_id("mine"), aggr_id("other")
    stack.worker(mine)
    theirs = api.post_job(job_body(files.url("tiny.png", aggr=other), other, callbacks.url))
    ours = api.post_job(job_body(files.url("tiny.png", aggr=mine), mine, callbacks.url))

    assert callbacks.wait_for(ours)["success"] is True
    time.sleep(1)  # what is asserted is that nothing happens to the other aggregation

    assert [r.query["aggr"] for r in files.seen("tiny.png")] == [mine]
    assert stack.db.zscore(f"jobs:{other}", theirs) is not None
    stack.worker(other)
    assert callbacks.wait_for(theirs)["success"] is True


def test_api_worker_and_notifier_exit_0_on_sigterm(stack: Stack) -> None:
    procs = stack.all_three()

    for proc in procs:
        proc.signal(signal.SIGTERM)

    assert {proc.name: proc.wait(15) for proc in procs} == {"api": 0, "worker": 0, "notifier": 0}


def test_an_idle_worker_starts_a_new_aggregation_without_waiting_for_its_scan(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    """The API announces an aggregation whose queue was empty; the worker need not scan."""
    api, _, _ = stack.all_three(scan_interval_seconds=60)
    time.sleep(1.5)  # past the worker's first scan: from now on only the announcement can wake it
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id("wakeup"), callbacks.url))

    assert callbacks.wait_for(job_id, timeout=20)["success"] is True


def test_a_subpath_puts_the_file_and_its_url_under_it_and_traversal_is_refused(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(DOWNLOADER_DELETION_DELAY_SECONDS="3")
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url, subpath="shop/2026"))
    payload = callbacks.wait_for(job_id)
    key = f"shop/2026/{job_id[:3]}/{job_id}"
    assert payload["download_url"] == f"{DOWNLOAD_URL_BASE}/{key}"
    stored = stack.storage_root / key
    assert stored.read_bytes() == files.content("tiny.png")
    wait_until(lambda: not stored.exists(), message="the reaper to delete the file under its subpath")

    refused = api.http.post("/download", json=job_body(files.url("tiny.png"), aggr_id(), callbacks.url,
                                                       subpath="../../etc"))  # fmt: skip
    assert refused.status_code == 400 and "Invalid path specified: ../../etc" in refused.text


def test_a_jobs_max_size_lowers_the_cap_for_that_job_only(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    size = len(files.content("sample-1.jpg"))
    aggr = aggr_id()
    small = api.post_job(job_body(files.url("sample-1.jpg"), aggr, callbacks.url, max_size=size - 1))
    exact = api.post_job(job_body(files.url("sample-1.jpg"), aggr, callbacks.url, max_size=size))

    refused = callbacks.wait_for(small)
    assert refused["success"] is False and refused["attempts"] == 1  # terminal, not retried
    assert f"exceeds the limit of {size - 1} bytes" in refused["error"]
    assert callbacks.wait_for(exact)["success"] is True

    too_big = api.http.post("/download", json=job_body(files.url("sample-1.jpg"), aggr, callbacks.url,
                                                        max_size=(1 << 30) + 1))  # fmt: skip
    assert too_big.status_code == 400 and "max_size must not exceed" in too_big.text
