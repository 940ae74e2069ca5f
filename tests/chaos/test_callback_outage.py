"""The callback receiver is down (its port closed) for the first half of a run, then comes
back on the same port: every callback is delivered, none is given up on, none is lost.

Jobs are posted all along; the receiver comes up once half of them have been posted and every
one of those has had its callback refused at least once, so the outage is really lived
through, not merely scheduled.
"""

from __future__ import annotations

import re
import time

import pytest
from support.chaos import CallbackFigures, print_figures, wait_delivered, wait_no_leases
from support.posting import JobPoster
from support.procs import Stack, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.chaos

JOBS = 400
AGGREGATIONS = 4
REFUSED = re.compile(r"callback of job (\S+) failed \(attempt (\d+)\), retrying")


def refused_attempts(stack: Stack) -> dict[str, int]:
    """job id -> highest refused attempt, from the notifiers' logs."""
    out: dict[str, int] = {}
    for proc in stack.procs:
        if proc.name == "notifier":
            for job_id, attempt in REFUSED.findall(proc.output()):
                out[job_id] = max(out.get(job_id, 0), int(attempt))
    return out


def test_callbacks_refused_for_half_a_run_are_all_delivered_when_the_receiver_returns(
    stack: Stack, files: FileServer
) -> None:
    port = free_port()  # nobody listens yet: connections are refused
    receiver = CallbackServer()
    callback_url = f"http://127.0.0.1:{port}/callback"
    # Linear backoff of 0.05 s x attempt: ~20 attempts in a 10 s outage, never given up on.
    stack.configure(callback_max_attempts=100000, callback_backoff_seconds=0.05, callback_timeout_seconds=2)
    api = stack.api()
    stack.worker()
    notifier = stack.notifier()
    aggrs = [aggr_id("cbdown") for _ in range(AGGREGATIONS)]
    bodies = [
        job_body(files.url("tiny.png", i=i), aggrs[i % AGGREGATIONS], callback_url, limit=8)
        for i in range(JOBS)
    ]

    started = time.monotonic()
    poster = JobPoster(api.url, bodies, threads=2, pace=0.04).start()
    try:
        first_half = wait_until(
            lambda: (acked := poster.acknowledged) and len(acked) >= JOBS // 2 and acked,
            60,
            "half the jobs posted",
        )
        first_ids = set(first_half.values())
        wait_until(
            lambda: first_ids <= set(refused_attempts(stack)),
            60,
            "every early job's callback to be refused once",
        )
        receiver.start(port)  # back, on the same port
        up = time.monotonic()
        poster.join(60)
        acked = poster.acknowledged
        done = wait_delivered(receiver, acked.values(), timeout=60)
        left = wait_no_leases(stack.db, 5)
        figures = CallbackFigures.count(receiver, acked.values())
        refused = refused_attempts(stack)
        logs = notifier.output()
    finally:
        receiver.stop()

    print_figures(
        "callback receiver down, then up",
        {
            "jobs posted / acknowledged": f"{JOBS} / {len(acked)}",
            "receiver down for": f"{up - started:.1f} s ({len(first_ids)} jobs posted meanwhile)",
            "jobs with refused callbacks": len(refused),
            "refused attempts (sum / most for one job)": f"{sum(refused.values())} / {max(refused.values())}",
            "delivered": figures.delivered,
            "duplicate callbacks (identical)": figures.duplicates,
            "lost": len(figures.lost),
            "given up on": logs.count("failed for good"),
            "last delivery after the receiver came up": f"{done - up:.1f} s",
            "leases left": left or 0,
            "wall time": f"{done - started:.1f} s",
        },
    )
    assert len(acked) == JOBS
    assert figures.lost == []
    assert figures.divergent == []
    assert figures.failed_payloads == []
    assert "failed for good" not in logs
    assert len(refused) >= JOBS // 2, "the outage was lived through by half the jobs"
    assert all(c.payload["success"] for c in receiver.all())
    assert left == {}
    notifier.check_alive()
