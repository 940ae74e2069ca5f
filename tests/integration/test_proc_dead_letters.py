"""A job hash that cannot be read is set aside, and its batch goes on without it.

Real processes (api, worker, notifier) on a real Redis: a worker claims five jobs in one
batch, the middle one's hash holds a field the original's Job struct lacks. The other four
are downloaded and delivered at once (not after a lease expires), the bad one becomes a dead
letter that `GET /jobs/<id>` and the dashboard show with its reason, and a restarted notifier
does not queue it again.
"""

from __future__ import annotations

import time

import pytest
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer

from downloader.store import keys

pytestmark = pytest.mark.integration

#: Far longer than the test may take: a job that waited for a lease to expire shows.
LEASE_SECONDS = 60


def test_an_unreadable_job_in_a_batch_is_dead_lettered_and_its_neighbours_are_delivered_at_once(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    stack.configure(lease_seconds=LEASE_SECONDS)
    api = stack.api()
    aggr = aggr_id("dead-letter")
    ids = [
        api.post_job(job_body(files.url("sample-1.jpg", n=n), aggr, callbacks.url, limit=5)) for n in range(5)
    ]
    bad = ids[2]
    stack.db.hset(keys.job(bad), "Bogus", "x")  # unreadable for the original and for us

    started = time.monotonic()
    stack.worker()
    stack.notifier()
    for job_id in ids[:2] + ids[3:]:
        assert callbacks.wait_for(job_id, timeout=30)["success"] is True
    assert time.monotonic() - started < LEASE_SECONDS / 2, "nobody waited for a lease to expire"

    view = api.job(bad)
    assert view.status_code == 200, view.text
    assert view.json()["state"] == "dead_lettered"
    assert view.json()["dead_letter"] == "Field Bogus with value x was not found in Job struct"
    failures = api.http.get("/ui/overview").json()["recent_failures"]
    assert [f["job_id"] for f in failures] == [bad]
    assert "Field Bogus with value x" in failures[0]["error"]
    assert stack.db.zcard(keys.inflight(aggr)) == 0 and stack.db.zcard(keys.queue(aggr)) == 0
    worker_log = "".join(p.output() for p in stack.procs if p.name == "worker")
    assert f"job {bad} of {aggr} is unreadable, set aside as a dead letter" in worker_log
    assert "Traceback" not in worker_log

    stack.notifier()  # its start-up sweep (a SCAN of a few keys) re-queues lost jobs, never a dead letter
    time.sleep(1.0)
    assert stack.db.zscore(keys.queue(aggr), bad) is None
    assert len(files.seen("sample-1.jpg")) == 4
