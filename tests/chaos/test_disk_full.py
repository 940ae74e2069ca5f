"""A full disk, for real: the worker's tmp dir is an 8 MiB tmpfs.

1. A ballast file pushes it above the high watermark while downloads run: the worker pauses
   (interrupts what runs, claims nothing new), and resumes once the ballast is deleted (below
   the low watermark). No partial file is ever stored or reported.
2. With the watermarks out of the way, a download runs into ENOSPC mid-stream: no partial
   file is stored, the attempt is retried later without using one of the job's attempts, and
   it succeeds once there is room.

A watcher checks every file the moment it appears in the storage root (on the ordinary disk).
"""

from __future__ import annotations

import os
import time

import pytest
from support.chaos import SmallTmpfs, StoreWatcher, print_figures, wait_delivered, wait_no_leases
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

from downloader.store import keys

pytestmark = pytest.mark.chaos

MiB = 1 << 20


def test_a_disk_filled_above_the_high_watermark_pauses_downloads_until_it_is_freed(
    small_tmp: SmallTmpfs, stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    jobs = 12
    stack.configure(
        disk_high_watermark_percent=50,
        disk_low_watermark_percent=30,
        disk_check_interval_seconds=0.2,
        worker_concurrency=4,
    )
    api = stack.api()
    stack.notifier()
    worker = stack.worker()
    # Distinct random 256 KiB sources, each streamed in ~0.8 s: the fill lands mid-download.
    sources = {f"disk-{i}.bin": os.urandom(MiB // 4) for i in range(jobs)}
    for name, data in sources.items():
        files.add_file(name, data)
    complete = set(sources.values())
    watcher = StoreWatcher(stack.storage_root, lambda job_id, data: data in complete).start()
    aggr = aggr_id("disk")
    try:
        ids = {
            api.post_job(
                job_body(files.url(name, delay=0.1, chunk=32768), aggr, callbacks.url, limit=4)
            ): name
            for name in sources
        }
        wait_until(lambda: files.in_flight >= 3, 15, "downloads to be running")

        ballast = small_tmp.fill("ballast", 5 * MiB)  # 5 of 8 MiB: above 50 %
        filled_percent = small_tmp.used_percent()
        wait_until(lambda: "pausing downloads" in worker.output(), 5, "the worker to pause")
        noticed = time.monotonic()
        interrupted = [r for r in files.seen() if r.ended is None or r.ended > noticed - 0.5]
        time.sleep(2.5)  # what is asserted is that nothing starts meanwhile
        started_while_paused = [r for r in files.seen() if r.started > noticed + 0.1]
        leases_while_paused = stack.db.zcard(f"inflight:{aggr}")
        delivered_while_paused = len(callbacks.all())

        ballast.unlink()
        wait_until(lambda: "resuming downloads" in worker.output(), 5, "the worker to resume")
        resumed = time.monotonic()
        done = wait_delivered(callbacks, ids, timeout=30)
    finally:
        watcher.stop()
    left = wait_no_leases(stack.db, 3)
    payloads = {job_id: callbacks.wait_for(job_id) for job_id in ids}
    leftovers = small_tmp.leftovers()

    print_figures(
        "disk above the high watermark",
        {
            "jobs": jobs,
            "tmpfs used after the fill": f"{filled_percent:.0f} % (high 50, low 30)",
            "downloads interrupted by the pause": len(interrupted),
            "downloads started while paused": len(started_while_paused),
            "leases held while paused": leases_while_paused,
            "callbacks delivered while paused": delivered_while_paused,
            "requests in all": f"{len(files.seen())} ({len(files.seen()) - jobs} repeated)",
            "all delivered after the resume in": f"{done - resumed:.1f} s",
            "stored files checked / bad": f"{len(watcher.checked)} / {len(watcher.bad)}",
            "files left in tmp": leftovers,
        },
    )
    assert filled_percent > 50
    assert started_while_paused == [], "a paused worker started a download"
    assert leases_while_paused == 0, "running downloads were given back at the pause"
    assert len(interrupted) >= 1, "the pause interrupted no running download: nothing was tested"
    assert all(p["success"] for p in payloads.values()), payloads
    assert watcher.bad == [], watcher.bad
    for job_id, name in ids.items():
        assert stack.stored_path(job_id).read_bytes() == sources[name], f"{job_id}: stored != source"
        assert payloads[job_id]["download_url"].endswith(f"/{job_id[:3]}/{job_id}")
    assert watcher.checked == set(ids)
    assert leftovers == [], "partial downloads left in tmp"
    assert left == {}
    worker.check_alive()


def test_a_download_that_hits_enospc_mid_stream_stores_nothing_and_is_retried_later(
    small_tmp: SmallTmpfs, stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    # Watermarks that never trip (above 100 % cannot happen): the write itself must fail.
    stack.configure(
        disk_high_watermark_percent=100,
        disk_low_watermark_percent=90,
        disk_check_interval_seconds=0.2,
        retry_backoff_seconds=0.3,
    )
    api = stack.api()
    stack.notifier()
    worker = stack.worker()
    source = os.urandom(3 * MiB)
    files.add_file("big.bin", source)
    ballast = small_tmp.fill("ballast", 7 * MiB)  # ~1 MiB left: the 3 MiB file cannot fit
    watcher = StoreWatcher(stack.storage_root, lambda job_id, data: data == source).start()
    try:
        # No retries at all: only uncounted (internal) failures may repeat it.
        job_id = api.post_job(
            job_body(
                files.url("big.bin", delay=0.01, chunk=65536), aggr_id("enospc"), callbacks.url, max_retries=0
            )
        )
        wait_until(
            lambda: sum(r.ended is not None for r in files.seen("big.bin")) >= 3, 20, "three attempts to end"
        )
        errors = stack.db.lrange(keys.job_errors(job_id), 0, -1)
        failed_attempts = len(errors)
        count_while_failing = stack.db.hget(f"job:{job_id}", "DownloadCount")
        stored_while_failing = stack.stored_path(job_id).exists()
        called_back_while_failing = callbacks.for_job(job_id)

        ballast.unlink()
        payload = callbacks.wait_for(job_id, timeout=20)
    finally:
        watcher.stop()
    leftovers = small_tmp.leftovers()

    print_figures(
        "ENOSPC mid-stream",
        {
            "attempts that hit ENOSPC": failed_attempts,
            "their error": errors[-1] if errors else None,
            "DownloadCount while failing": count_while_failing,
            "stored while failing": stored_while_failing,
            "callbacks while failing": len(called_back_while_failing),
            "attempts in all": len(files.seen("big.bin")),
            "final callback success": payload["success"],
            "stored files checked / bad": f"{len(watcher.checked)} / {len(watcher.bad)}",
            "files left in tmp": leftovers,
        },
    )
    assert failed_attempts >= 3 and all("No space left on device" in e for e in errors), errors
    assert count_while_failing == "0", "a full disk used up one of the job's attempts"
    assert not stored_while_failing
    assert called_back_while_failing == []
    assert payload["success"] is True, payload
    assert stack.stored_path(job_id).read_bytes() == source
    assert watcher.bad == [] and watcher.checked == {job_id}
    assert leftovers == [], "the partial tmp file was left behind"
    worker.check_alive()
