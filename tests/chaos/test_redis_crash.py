"""Redis SIGKILLed mid-run under load, while workers are SIGKILLed too.

tests/sentinel/test_redis_restart.py covers a plain restart (SIGTERM, so Redis writes its AOF
on the way out) with nobody else failing. This one is harsher: a dedicated redis-server with
`appendonly yes` and `appendfsync always` is killed with SIGKILL (only what was fsynced before
each answer survives), stays down longer than the clients' own retries last, and workers keep
being killed and replaced all along, replacements starting while Redis is down. The test
client retries POSTs that fail during the outage. Every job the API acknowledged (201) must
complete and be called back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chaos import (
    CHAOS_SETTINGS,
    AofRedis,
    CallbackFigures,
    WorkerKiller,
    print_figures,
    quiet_disconnects,
    wait_delivered,
    wait_no_leases,
)
from support.posting import JobPoster
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = pytest.mark.chaos

JOBS = 800
AGGREGATIONS = 8
CRASH_AFTER = 300  # acknowledged jobs
OUTAGE_SECONDS = 6.0  # longer than the ~4 s the Redis client retries on its own
LEASE_SECONDS = 3


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path: Path, aof_redis: AofRedis) -> Iterator[Stack]:
    """The chaos stack on the dedicated AOF Redis (named `stack` so that a failure shows the
    processes' logs)."""
    s = Stack(tmp_path, aof_redis.url, **CHAOS_SETTINGS)
    yield s
    s.stop_all()


def test_a_redis_sigkill_under_load_and_worker_kills_loses_no_acknowledged_job(
    stack: Stack, aof_redis: AofRedis, files: FileServer, callbacks: CallbackServer
) -> None:
    quiet_disconnects(files)
    stack.configure(lease_seconds=LEASE_SECONDS, crash_tolerance=1000, worker_concurrency=16)
    api = stack.api()
    notifier = stack.notifier()
    aggrs = [aggr_id("rcrash") for _ in range(AGGREGATIONS)]
    bodies = [
        job_body(
            files.url("sample-1.jpg", i=i, delay=0.01, chunk=8192),
            aggrs[i % AGGREGATIONS],
            callbacks.url,
            limit=4,
        )
        for i in range(JOBS)
    ]

    started = time.monotonic()
    killer = WorkerKiller(stack, 3, every=(2.0, 4.0), seed=3).start()
    try:
        # ~15 s of posting: the crash lands in the middle of posting and downloading.
        poster = JobPoster(api.url, bodies, threads=4, pace=0.06).start()
        wait_until(lambda: len(poster.acknowledged) >= CRASH_AFTER, 60, f"{CRASH_AFTER} acknowledged jobs")
        acked_before = len(poster.acknowledged)
        kills_before_crash = killer.kills
        aof_redis.kill9()
        down_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        aof_redis.start()
        outage = time.monotonic() - down_at
        kills_during_outage = killer.kills - kills_before_crash
        poster.join(150)
        acked = poster.acknowledged
        done = wait_delivered(callbacks, acked.values(), timeout=170 - (time.monotonic() - started))
    finally:
        killer.stop()
    left = wait_no_leases(stack.db, LEASE_SECONDS * 3)
    figures = CallbackFigures.count(callbacks, acked.values())
    delivered_ids = {str(c.payload.get("job_id")) for c in callbacks.all() if 200 <= c.answered < 300}

    print_figures(
        "redis SIGKILL + worker kills",
        {
            "jobs posted / acknowledged": f"{JOBS} / {len(acked)}",
            "acknowledged before the crash": acked_before,
            "POSTs retried (no answer or 5xx)": poster.retried_posts,
            "redis down for": f"{outage:.1f} s",
            "worker SIGKILLs (while redis was down)": f"{killer.kills} ({kills_during_outage})",
            "workers that exited by themselves": len(killer.exited_by_themselves),
            "delivered": figures.delivered,
            "duplicate callbacks (identical)": figures.duplicates,
            "lost": len(figures.lost),
            "failed jobs": len(figures.failed_payloads),
            "delivered jobs never acknowledged": len(delivered_ids - set(acked.values())),
            "leases left": left or 0,
            "wall time": f"{done - started:.1f} s",
        },
    )
    assert len(acked) == JOBS
    assert poster.retried_posts > 0, "the outage was not seen by the client"
    assert kills_during_outage >= 1, "no worker was killed while Redis was down"
    assert figures.lost == [], f"acknowledged jobs lost: {figures.lost[:10]}"
    assert figures.divergent == []
    assert figures.failed_payloads == [], "the outage or a kill failed a job"
    assert left == {}
    for proc in (api, notifier):
        proc.check_alive()
    # Replacements started while Redis was down must wait for it, not exit.
    assert not killer.exited_by_themselves, killer.exited_by_themselves
