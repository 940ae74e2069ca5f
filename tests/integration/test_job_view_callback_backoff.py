"""GET /jobs/<id> while a callback waits out its backoff: `next_attempt_at` says when its next
attempt is due (the job's score in CallbackQueue), not null. Real api, worker and notifier."""

from __future__ import annotations

import datetime

import pytest
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.integration


def test_next_attempt_at_shows_when_a_failed_callback_is_tried_again(stack: Stack, files: FileServer) -> None:
    receiver = CallbackServer(status=500)
    receiver.start()
    try:
        api, _, _ = stack.all_three(callback_backoff_seconds=60, callback_max_attempts=3)
        job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id("cb-wait"), receiver.url))

        view = wait_until(
            lambda: (
                (v := api.job(job_id).json())["callback"]["attempts"] == 1
                and v["callback"]["state"] == "Pending"
                and v
            ),
            30,
            "the first callback attempt to fail and wait for the next",
        )

        assert view["state"] == "callback_pending"
        assert view["next_attempt_at"] is not None, view
        due = stack.db.zscore("CallbackQueue", job_id)
        assert due is not None
        expected = datetime.datetime.fromtimestamp(due, tz=datetime.UTC).isoformat(timespec="milliseconds")
        assert view["next_attempt_at"] == expected
        assert view["next_attempt_at"] > view["updated_at"], "due after the failed attempt (a backoff)"
        assert len(receiver.for_job(job_id)) == 1
    finally:
        receiver.stop()
