"""A job whose callback failed for good is kept for the failed retention, then deleted whole.

Within DOWNLOADER_JOB_RETENTION_SECONDS its hash, its meta (the timestamps GET /jobs
shows) and its stored file all stay, so POST /retry/<id> re-sends everything, sha256 and size
included; after it the reaper deletes the three together. A retried job is no longer Failed:
its retention ends with it, so its file outlives the new attempts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.integration

RETENTION = 4.0
TINY_PNG_SIZE = (Path(__file__).parent.parent / "data" / "tiny.png").stat().st_size


def _kept(stack: Stack, job_id: str) -> tuple[bool, bool, bool]:
    """(hash, meta, file) still there."""
    return (
        bool(stack.db.exists(f"job:{job_id}")),
        bool(stack.db.exists(f"jobmeta:{job_id}")),
        stack.stored_path(job_id).exists(),
    )


def test_a_failed_callback_keeps_hash_meta_and_file_for_the_retention_then_all_go(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(callback_max_attempts=1, job_retention_seconds=RETENTION)
    callbacks.answer_next([500, 500])
    aggr = aggr_id("retained")
    doomed = api.post_job(job_body(files.url("tiny.png", n=1), aggr, callbacks.url))
    retried = api.post_job(job_body(files.url("tiny.png", n=2), aggr, callbacks.url))

    def failed() -> bool:
        return all(stack.db.hget(f"job:{j}", "CallbackState") == "Failed" for j in (doomed, retried))

    wait_until(failed, 20, "both callbacks to fail for good")
    failed_at = time.monotonic()
    assert _kept(stack, doomed) == (True, True, True) and _kept(stack, retried) == (True, True, True)
    assert stack.db.zscore("JobDeletionQueue", doomed) is not None  # its end is scheduled

    assert api.http.post(f"/retry/{retried}").status_code == 204
    payload = callbacks.wait_for(retried, timeout=10)
    assert payload["sha256"] and payload["size"] == TINY_PNG_SIZE

    wait_until(lambda: _kept(stack, doomed) == (False, False, False), RETENTION + 15,
               "the failed job's hash, meta and file to be deleted together")  # fmt: skip
    gone_after = time.monotonic() - failed_at
    assert gone_after >= RETENTION - 0.5, f"deleted after {gone_after:.1f}s, before the retention"
    assert api.job(doomed).status_code == 404
    # The retried one was delivered: it now follows the delivered jobs' deletion delay (3 h).
    assert stack.stored_path(retried).exists()
