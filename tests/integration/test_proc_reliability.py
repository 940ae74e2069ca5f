"""Reliability through real processes: crashes, shutdowns, a Redis restart, a full disk,
the fleet-wide limit with two workers, and compatibility with the original's Redis data.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import threading
import time
import urllib.parse
from typing import Any

import httpx
import pytest
from support.procs import DOWNLOAD_URL_BASE, Proc, Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until
from support.tcpproxy import StallableRelay

from downloader.jobs.models import JOB_FIELDS

pytestmark = pytest.mark.integration

#: The fields of the original's Job struct (checked against a literal Go hash in
#: tests/unit/test_models.py): its reader rejects a hash with any other field.
GO_JOB_FIELDS = list(JOB_FIELDS)
#: Long enough that the test sees the fence (3/4 of it) act well before the lease expires.
LEASE_SECONDS = 4


def download_url(job_id: str) -> str:
    return f"{DOWNLOAD_URL_BASE}/{job_id[:3]}/{job_id}"


def go_job_id() -> str:
    """An id as the original draws it: 10 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(os.urandom(10)).decode().rstrip("=")


def worker_token(proc: Proc) -> str:
    found = re.search(r"worker (\w+) serving", proc.output())
    assert found, f"no start line in {proc.name}'s log"
    return found.group(1)


# --- crashes and shutdowns --------------------------------------------------------------------


def test_a_worker_killed_mid_download_loses_no_job_and_the_crash_uses_no_attempt(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.configure(lease_seconds=2)  # a dead worker's job comes back within 2 s
    api = stack.api()
    stack.notifier()  # gives expired leases back
    first = stack.worker()
    url = files.url("sample-1.jpg", delay=0.15, chunk=4096)  # about 1.2 s
    job_id = api.post_job(job_body(url, aggr_id("crash"), callbacks.url, max_retries=0))
    wait_until(lambda: files.seen("sample-1.jpg"), 15, "the download to start")

    first.kill9()
    stack.worker()
    payload = callbacks.wait_for(job_id, timeout=30)

    assert payload["success"] is True, payload
    assert payload["download_url"] == download_url(job_id)
    assert len(files.seen("sample-1.jpg")) == 2, "the killed attempt, then the one that finished"
    assert stack.stored_path(job_id).read_bytes() == files.content("sample-1.jpg")
    logs = "".join(p.output() for p in stack.procs)
    assert f"job {job_id} of " in logs and "its worker was lost; queued again" in logs


def test_sigterm_lets_a_running_download_finish_within_the_grace_period_and_exits_0(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    stack.notifier()
    worker = stack.worker(shutdown_grace_seconds=15)
    url = files.url("sample-1.jpg", delay=0.2, chunk=4096)  # about 1.6 s
    job_id = api.post_job(job_body(url, aggr_id("term"), callbacks.url, max_retries=0))
    wait_until(lambda: files.seen("sample-1.jpg"), 15, "the download to start")

    worker.signal(signal.SIGTERM)

    assert worker.wait(15) == 0
    (request,) = files.seen("sample-1.jpg")
    assert request.ended is not None and request.status == 200, "the download ran to its end"
    payload = callbacks.wait_for(job_id)
    assert payload["success"] is True
    assert stack.stored_path(job_id).read_bytes() == files.content("sample-1.jpg")


def test_sigterm_past_the_grace_period_gives_the_job_back_uncounted_for_a_later_worker(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    stack.notifier()
    worker = stack.worker(shutdown_grace_seconds=0.3)
    aggr = aggr_id("grace")
    url = files.url("sample-1.jpg", delay=0.25, chunk=4096)  # about 2 s
    job_id = api.post_job(job_body(url, aggr, callbacks.url, max_retries=0))
    wait_until(lambda: files.seen("sample-1.jpg"), 15, "the download to start")

    worker.signal(signal.SIGTERM)

    assert worker.wait(15) == 0
    job = stack.db.hgetall(f"job:{job_id}")
    assert (job["DownloadState"], job["DownloadCount"]) == ("Pending", "0")
    assert stack.db.zscore(f"jobs:{aggr}", job_id) is not None, "released to its queue at once"
    assert stack.db.zcard(f"inflight:{aggr}") == 0
    assert callbacks.for_job(job_id) == []

    stack.worker()
    payload = callbacks.wait_for(job_id, timeout=20)

    assert payload["success"] is True, "max_retries 0: the interrupted attempt was not counted"
    assert len(files.seen("sample-1.jpg")) == 2


# --- the fleet-wide limit -----------------------------------------------------------------------


def test_two_workers_never_run_more_than_the_aggregation_limit_together(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    stack.notifier()
    # Two download threads each: reaching 3 in flight takes both workers.
    workers = [stack.worker(worker_concurrency=2), stack.worker(worker_concurrency=2)]
    tokens = {worker_token(w) for w in workers}
    assert len(tokens) == 2
    aggr = aggr_id("fleet")
    seen_tokens: set[str] = set()
    max_leases = 0
    done = threading.Event()

    def watch_leases() -> None:
        nonlocal max_leases
        while not done.is_set():
            seen_tokens.update(str(t) for t in stack.db.hvals(f"leases:{aggr}"))
            max_leases = max(max_leases, stack.db.zcard(f"inflight:{aggr}"))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_leases, daemon=True)
    watcher.start()
    try:
        ids = [
            api.post_job(
                job_body(
                    files.url("sample-1.jpg", aggr=aggr, i=i, delay=0.12, chunk=8192),  # about 0.5 s
                    aggr,
                    callbacks.url,
                    limit=3,
                )
            )
            for i in range(30)
        ]
        payloads = [callbacks.wait_for(job_id, timeout=40) for job_id in ids]
    finally:
        done.set()
        watcher.join(5)

    assert all(p["success"] for p in payloads)
    assert files.peak_downloads_for(aggr) <= 3, "the limit holds across the fleet"
    assert files.peak_downloads_for(aggr) == 3, "the limit was used, which needs both workers"
    assert max_leases <= 3
    assert seen_tokens == tokens, "both workers held leases of the aggregation"


def test_a_worker_cut_off_from_redis_stops_its_download_before_another_worker_takes_the_job(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    # The partitioned worker cannot renew its lease; Redis lets it expire and the rest of the
    # fleet gives the job to another worker. The first must have stopped downloading by then,
    # or the aggregation runs two downloads under a limit of 1.
    stack.configure(lease_seconds=LEASE_SECONDS)
    relay = StallableRelay(*_host_port(stack.redis_url))
    try:
        api = stack.api()
        stack.notifier()  # gives the expired lease back
        metrics_port = free_port()
        cut_off = stack.worker(redis_url=_via(stack.redis_url, relay.port), metrics_port=metrics_port)
        aggr = aggr_id("fence")
        files.add_file("slow.bin", os.urandom(80 * 1024))
        url = files.url("slow.bin", aggr=aggr, delay=0.1, chunk=1024)  # 80 chunks: about 8 s
        job_id = api.post_job(job_body(url, aggr, callbacks.url, limit=1))
        wait_until(lambda: files.seen("slow.bin"), 15, "the first download to start")
        relay.stall()
        stalled = time.monotonic()
        stack.worker()
        payload = callbacks.wait_for(job_id, timeout=40)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False).text
    finally:
        relay.close()

    first, *later = files.seen("slow.bin")
    assert payload["success"] is True, payload
    assert first.aborted and first.ended is not None, "the cut-off worker's download was stopped"
    assert first.ended - stalled < LEASE_SECONDS, "it stopped before its lease could expire"
    assert later and all(first.ended < r.started for r in later), "never two downloads at once"
    assert stack.stored_path(job_id).read_bytes() == files.content("slow.bin")
    assert "its lease was not renewed" in cut_off.output()
    assert re.search(r"^downloader_leases_fenced_total 1\.0$", scraped, re.MULTILINE), scraped


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def _via(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=f"127.0.0.1:{port}").geturl()


# --- the original's Redis data -------------------------------------------------------------------


def _go_job(job_id: str, url: str, aggr: str, callback: str, extra: str = "x") -> dict[Any, Any]:
    job: dict[Any, Any] = dict.fromkeys(GO_JOB_FIELDS, "")
    job.update(
        ID=job_id,
        URL=url,
        AggrID=aggr,
        MaxRetries="null",
        DownloadState="Pending",
        DownloadCount="0",
        CallbackURL=callback,
        CallbackCount="0",
        Extra=extra,
        ResponseCode="0",
        ExtractImageSize="0",
        DownloadTimeout="0",
        RequestHeaders="null",
    )
    return job


#: A mixed fleet (the original's API still writing jobs) runs the adoption sweep often: the
#: original announces nothing and writes no registry, so its queues are found by SCAN only.
MIXED_FLEET = {"adoption_interval_seconds": 0.5}


def test_a_job_written_by_the_original_api_is_processed_and_its_limit_honoured(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.worker(**MIXED_FLEET)
    stack.notifier(**MIXED_FLEET)
    aggr = aggr_id("go")
    ids = [go_job_id() for _ in range(3)]
    for i, job_id in enumerate(ids):
        url = files.url("sample-1.jpg", aggr=aggr, i=i, delay=0.05, chunk=8192)
        job = _go_job(job_id, url, aggr, callbacks.url)
        assert len(job) == 23
        stack.db.hset(f"job:{job_id}", mapping=job)
    stack.db.hset(f"aggr:{aggr}", mapping={"ID": aggr, "Limit": "1", "Proxy": "", "ExpiresAt": ""})
    stack.db.zadd(f"jobs:{aggr}", dict.fromkeys(ids, int(time.time())))

    payloads = [callbacks.wait_for(job_id, timeout=20) for job_id in ids]

    for job_id, payload in zip(ids, payloads, strict=True):
        assert payload["success"] is True
        assert payload["extra"] == "x"
        assert payload["job_id"] == job_id
        assert payload["download_url"] == download_url(job_id)
    assert files.peak_downloads_for(aggr) == 1, "the Limit of the original's aggregation hash"


def test_an_aggregation_hash_of_the_original_without_expires_at_works(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.worker(**MIXED_FLEET)
    stack.notifier(**MIXED_FLEET)
    aggr = aggr_id("go-noexp")
    job_id = go_job_id()
    stack.db.hset(f"job:{job_id}", mapping=_go_job(job_id, files.url("tiny.png"), aggr, callbacks.url))
    stack.db.hset(f"aggr:{aggr}", mapping={"ID": aggr, "Limit": "2", "Proxy": ""})
    stack.db.zadd(f"jobs:{aggr}", {job_id: int(time.time())})

    payload = callbacks.wait_for(job_id)

    assert payload["success"] is True
    assert payload["download_url"] == download_url(job_id)


def test_our_job_hashes_hold_only_the_original_fields_while_waiting_and_after_a_failed_callback(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(retry_backoff_seconds=60, callback_max_attempts=1)
    files.add_file("retry-later.png", files.content("tiny.png"))
    files.answer("retry-later.png", 503)
    waiting = api.post_job(
        job_body(
            files.url("retry-later.png"),
            aggr_id(),
            callbacks.url,
            max_retries=3,
            extract_image_size=True,
            request_headers={"X-A": "1"},
            mime_type="image/*",
            download_timeout=30,
            extra='{"k":"v"}',
        )
    )
    callbacks.status = 500
    undelivered = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))

    wait_until(lambda: stack.db.hget(f"job:{waiting}", "DownloadCount") == "1", 15, "the first attempt")
    wait_until(
        lambda: stack.db.hget(f"job:{undelivered}", "CallbackState") == "Failed", 15, "the callback to fail"
    )

    job = stack.db.hgetall(f"job:{waiting}")
    assert sorted(job) == sorted(GO_JOB_FIELDS)
    assert job["DownloadState"] == "Pending"
    assert job["MaxRetries"] == "3"
    assert job["ExtractImageSize"] == "1"
    assert job["DownloadTimeout"] == "30"
    assert job["ResponseCode"] == "503"
    assert job["RequestHeaders"] == '{"X-A":"1"}'
    failed = stack.db.hgetall(f"job:{undelivered}")
    assert sorted(failed) == sorted(GO_JOB_FIELDS)
    assert failed["MaxRetries"] == "null"
    assert failed["RequestHeaders"] == "null"
    assert failed["DownloadState"] == "Success"
    assert failed["CallbackCount"] == "1"
    assert failed["CallbackMeta"] == "Received Status: 500 Internal Server Error"


# --- outages and a full disk -----------------------------------------------------------------------


def test_worker_and_notifier_survive_a_redis_restart_and_process_a_job_posted_after_it(
    stack: Stack, files: FileServer, callbacks: CallbackServer, redis_server: object
) -> None:
    api, worker, notifier = stack.all_three()
    before = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    assert callbacks.wait_for(before)["success"] is True
    marks = {p.name: len(p.output()) for p in (worker, notifier)}

    redis_server.stop()  # type: ignore[attr-defined]
    wait_until(
        lambda: all("WARNING" in p.output()[marks[p.name] :] for p in (worker, notifier)),
        15,
        "worker and notifier to notice the outage",
    )
    redis_server.start()  # type: ignore[attr-defined]

    worker.check_alive()
    notifier.check_alive()
    after = api.post_job(job_body(files.url("sample-1.jpg"), aggr_id(), callbacks.url))
    payload = callbacks.wait_for(after, timeout=30)
    assert payload["success"] is True
    assert stack.stored_path(after).read_bytes() == files.content("sample-1.jpg")
    worker.check_alive()
    notifier.check_alive()


FULL_DISK: dict[str, Any] = {
    # Any used space is above 0 %: the disk counts as full from the first check on.
    "disk_high_watermark_percent": 0,
    "disk_low_watermark_percent": 0,
    "disk_check_interval_seconds": 0.2,
}


def test_a_worker_started_on_a_full_disk_downloads_none_of_the_jobs_already_queued(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    stack.notifier()
    aggr = aggr_id("disk")
    ids = [api.post_job(job_body(files.url("tiny.png", i=i), aggr, callbacks.url)) for i in range(2)]

    sick = stack.worker(**FULL_DISK)
    wait_until(lambda: "pausing downloads" in sick.output(), 10, "the worker to pause")
    time.sleep(1.5)  # what is asserted is that nothing happens

    assert files.seen() == [], "a worker on a full disk sent a request"
    assert stack.db.zcard(f"jobs:{aggr}") == 2, "the jobs stay queued"
    assert stack.db.zcard(f"inflight:{aggr}") == 0
    assert all(stack.db.hget(f"job:{j}", "DownloadCount") == "0" for j in ids)
    sick.check_alive()


def test_jobs_posted_while_the_disk_is_full_wait_for_a_healthy_worker(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api = stack.api()
    stack.notifier()
    sick = stack.worker(**FULL_DISK)
    wait_until(lambda: "pausing downloads" in sick.output(), 10, "the worker to pause")
    aggr = aggr_id("disk")

    ids = [api.post_job(job_body(files.url("tiny.png", i=i), aggr, callbacks.url)) for i in range(2)]
    time.sleep(1.5)  # what is asserted is that nothing happens

    assert files.seen() == [], "a paused worker sent a request"
    assert stack.db.zcard(f"jobs:{aggr}") == 2, "the jobs stay queued"
    assert stack.db.zcard(f"inflight:{aggr}") == 0
    sick.check_alive()

    stack.worker()  # a healthy one takes them
    assert all(callbacks.wait_for(j)["success"] for j in ids)


# --- more crashes: the notifier, and a job that keeps killing its worker ---------------------------


def test_a_notifier_killed_mid_callback_loses_no_callback(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.configure(lease_seconds=2)  # a dead notifier's callback comes back within 2 s
    api = stack.api()
    stack.worker()
    first = stack.notifier()
    callbacks.hold_next(1, 30)
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    wait_until(lambda: callbacks.for_job(job_id), 15, "the first callback POST")

    first.kill9()
    stack.notifier()
    payload = callbacks.wait_for(job_id, timeout=20)

    assert payload["success"] is True
    assert payload["download_url"] == download_url(job_id)
    assert [c.answered for c in callbacks.for_job(job_id)] == [-1, 200], "the first one never got its answer"
    wait_until(lambda: not stack.db.exists(f"job:{job_id}"), 10, "the delivered job's hash to go")


def test_a_job_that_keeps_losing_its_worker_fails_once_its_crash_tolerance_is_used_up(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.configure(lease_seconds=2, crash_tolerance=0)  # the first crash already counts
    api = stack.api()
    stack.notifier()
    worker = stack.worker()
    url = files.url("sample-1.jpg", delay=0.3, chunk=4096)
    job_id = api.post_job(job_body(url, aggr_id("poison"), callbacks.url, max_retries=0))
    wait_until(lambda: files.seen("sample-1.jpg"), 15, "the download to start")

    worker.kill9()
    payload = callbacks.wait_for(job_id, timeout=20)

    assert payload["success"] is False
    assert "the worker holding the job was lost" in payload["error"]
    assert payload["download_url"] == ""
    assert len(files.seen("sample-1.jpg")) == 1
