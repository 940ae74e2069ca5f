"""A delivered job stays visible through GET /jobs/<id> until its file is deleted.

The original deleted a job's hash the moment its callback was delivered, so the README's
"GET /jobs/<id> shows state, attempts, errors and timestamps" answered 404 a fraction of a
second after the POST. Its hash still goes then (the original's tools read `job:*`), but what
a view needs stays in our own `jobmeta:<id>` until the reaper deletes it with the file.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

from downloader.store import keys

pytestmark = pytest.mark.integration

DELETION_DELAY = 3.0
TINY_PNG = (Path(__file__).parent.parent / "data" / "tiny.png").read_bytes()


def test_a_delivered_job_shows_its_outcome_until_its_file_is_deleted_then_404(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(deletion_delay_seconds=DELETION_DELAY)
    aggr = aggr_id("delivered")
    stored_ok = api.post_job(job_body(files.url("tiny.png"), aggr, callbacks.url, extract_image_size=True))
    failed = api.post_job(job_body(files.url("no-such-file.png"), aggr, callbacks.url, max_retries=0))

    assert callbacks.wait_for(stored_ok)["success"] is True
    assert callbacks.wait_for(failed)["success"] is False
    view = wait_until(
        lambda: (
            (r := api.job(stored_ok)).status_code == 200 and r.json()["state"] == "delivered" and r.json()
        ),
        10,
        "the delivered job to show as delivered",
    )
    delivered_at = time.monotonic()
    assert not stack.db.exists(keys.job(stored_ok)), "its hash goes at delivery, as in the original"

    assert view["id"] == stored_ok and view["aggr_id"] == aggr and view["url"] == files.url("tiny.png")
    assert view["download"]["state"] == "Success" and view["download"]["attempts"] == 1
    assert view["download"]["response_code"] == 200 and view["download"]["image_size"] == "10x10"
    assert view["download"]["sha256"] == hashlib.sha256(TINY_PNG).hexdigest()
    assert view["download"]["size"] == len(TINY_PNG)
    assert view["download"]["download_url"].endswith(f"/{stored_ok[:3]}/{stored_ok}")
    assert view["callback"]["state"] == "Delivered" and view["callback"]["attempts"] == 1
    assert view["callback"]["destination"] == callbacks.url and view["callback"]["backend"] == "http"
    assert view["created_at"] <= view["started_at"] <= view["finished_at"] <= view["callback"]["delivered_at"]
    assert view["errors"] == [] and view["lease_expires_at"] is None and view["next_attempt_at"] is None

    failure = wait_until(
        lambda: (v := api.job(failed).json())["state"] == "delivered" and v, 10, "the failed one delivered"
    )
    assert failure["download"]["state"] == "Failed" and "404" in failure["download"]["error"]
    assert failure["download"]["sha256"] == "" and failure["download"]["size"] == 0
    assert failure["callback"]["state"] == "Delivered" and failure["callback"]["delivered_at"]

    # The reaper deletes the file after the deletion delay, and the job's record with it.
    wait_until(lambda: not stack.stored_path(stored_ok).exists(), DELETION_DELAY + 15, "the file to go")
    wait_until(lambda: api.job(stored_ok).status_code == 404, 5, "the delivered job to be gone")
    assert time.monotonic() - delivered_at >= DELETION_DELAY - 1.0, "gone before the deletion delay"
    wait_until(lambda: api.job(failed).status_code == 404, 10, "the failed one to be gone too")
    assert not stack.db.exists(keys.job_meta(stored_ok), keys.job_meta(failed))
