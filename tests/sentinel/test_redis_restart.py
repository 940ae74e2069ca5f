"""A plain Redis (AOF, fsync always) restarted mid-run under real api, worker and notifier.

Redis stays down longer than the clients' own retries last, so the processes' loops and
the API's error answers are exercised too; nobody is restarted, and every job the API
acknowledged completes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.posting import JobPoster
from support.procs import Stack, aggr_id, job_body
from support.sentinel_cluster import RedisProc
from support.sentinel_load import Figures
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.sentinel

JOBS = 300
RESTART_AFTER = 100
OUTAGE_SECONDS = 6.0  # beyond the ~4 s redis_client.RETRIES ride out inside the client


def test_a_redis_restart_mid_run_loses_no_acknowledged_job(
    tmp_path: Path, files: FileServer, callbacks: CallbackServer, watched: list[Any]
) -> None:
    server = RedisProc(
        "redis", tmp_path / "redis", ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    ).start()
    stack = Stack(tmp_path, server.url)
    watched += [server, stack]
    try:
        api, worker, notifier = stack.all_three()
        aggrs = [aggr_id("rs") for _ in range(4)]
        bodies = [
            job_body(
                files.url("sample-1.jpg", i=i, delay=0.05, chunk=8192), aggrs[i % 4], callbacks.url, limit=8
            )
            for i in range(JOBS)
        ]
        poster = JobPoster(api.url, bodies, threads=4, pace=0.05).start()
        wait_until(
            lambda: len(poster.acknowledged) >= RESTART_AFTER,
            60,
            f"{RESTART_AFTER} acknowledged jobs",
        )

        server.terminate()  # SIGTERM: Redis flushes its AOF and exits
        down_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        server.start()
        outage = time.monotonic() - down_at
        poster.join(180)

        for job_id in poster.acknowledged.values():
            wait_until(lambda j=job_id: callbacks.delivered(j), 120, f"the callback of job {job_id}")
        wait_until(
            lambda: (
                not list(stack.db.scan_iter(match="inflight:*")) and stack.db.zcard("CallbackInflight") == 0
            ),
            30,
            "every lease to be released",
        )
        figures = Figures.count(poster, callbacks)
        figures.report("Redis restart", **{"redis down (s)": f"{outage:.1f}"})

        assert poster.refused == []
        assert figures.acknowledged == JOBS
        assert figures.lost == []
        assert all(callbacks.wait_for(j)["success"] for j in poster.acknowledged.values())
        # The outage was visible, and said so clearly: 5xx answers, one warning per loop.
        assert poster.errors and all(e.startswith("500 ") for e in poster.errors), poster.errors[:3]
        assert any("Connection" in e for e in poster.errors), poster.errors[:3]
        assert "redis unavailable" in worker.output() and "redis unavailable" in notifier.output()
        assert worker.output().count("wakeup subscription lost") == 1
        for proc in (api, worker, notifier):
            proc.check_alive()
    finally:
        stack.stop_all()
        server.terminate()
